"""Rule register_global: refine every tile's position from the overlaps of the round-0 fiducials."""
from merfishflow.workflow.jobs import run_job
from merfishflow.io.naming import tile_name
from merfishflow.io.paths import experiment_of
from merfishflow.stages.register import RegistrationParams, run_register_global


def main(smk, progress):
    tiles = [tile_name(t) for t in range(len(smk.params.stage_positions))]
    run_register_global(experiment_of(smk.output[0]), tiles, smk.params.stage_positions,
                        RegistrationParams(**smk.params.registration), progress=progress)


run_job(snakemake, main)  # noqa: F821 (injected by Snakemake)

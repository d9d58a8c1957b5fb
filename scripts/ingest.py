"""Rule ingest: one tile's raw TIFFs (every round) into camera_data and corrected_data."""
from merfishflow.stages.ingest import CorrectionParams, run_ingest_tile
from merfishflow.workflow.jobs import run_job
from merfishflow.io.paths import experiment_of


def main(smk, progress):
    run_ingest_tile(experiment_of(smk.output[0]), smk.wildcards.tile, smk.params.stage_zyx_um,
                    CorrectionParams(**smk.params.correction), progress=progress,
                    slab_planes=smk.params.slab_planes, threads=smk.threads)


run_job(snakemake, main)  # noqa: F821 (injected by Snakemake)

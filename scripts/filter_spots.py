"""Rule filter_spots: blank-based FDR filter and overlap cleanup of all tiles' spots."""
from merfishflow.spots.filtering import FilterParams
from merfishflow.workflow.jobs import run_job
from merfishflow.io.paths import experiment_of
from merfishflow.stages.decode import run_filter


def main(smk, progress):
    run_filter(experiment_of(smk.output[0]), smk.params.tiles, FilterParams(**smk.params.filtering),
               progress=progress)


run_job(snakemake, main)  # noqa: F821 (injected by Snakemake)

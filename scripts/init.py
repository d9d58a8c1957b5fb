"""Rule init: raw_data metadata and optics into calibrations.zarr."""
from merfishflow.stages.init import run_init
from merfishflow.workflow.jobs import run_job
from merfishflow.io.paths import experiment_of


def main(smk, progress):
    run_init(experiment_of(smk.output[0]), progress=progress)


run_job(snakemake, main)  # noqa: F821 (injected by Snakemake)

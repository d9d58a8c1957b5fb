"""Rule export_spatialdata: the experiment as one SpatialData store."""
from merfishflow.io.paths import experiment_of
from merfishflow.stages.interop import export_spatialdata
from merfishflow.workflow.jobs import run_job


def main(smk, progress):
    progress(f"wrote {export_spatialdata(experiment_of(smk.output[0]), smk.output[0])}")


run_job(snakemake, main)  # noqa: F821 (injected by Snakemake)

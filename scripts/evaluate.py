"""Rule evaluate: precision, recall and F1 of the filtered spots against the simulator's truth."""
from merfishflow.workflow.jobs import run_job
from merfishflow.io.paths import experiment_of
from merfishflow.stages.decode import run_evaluate


def main(smk, progress):
    run_evaluate(experiment_of(smk.output[0]), smk.params.radius_um, progress=progress)


run_job(snakemake, main)  # noqa: F821 (injected by Snakemake)

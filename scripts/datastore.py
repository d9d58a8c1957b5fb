"""Rule datastore: summarize every stage's markers into datastore.json."""
from merfishflow.io.paths import experiment_of
from merfishflow.stages.summary import run_datastore_summary
from merfishflow.workflow.jobs import run_job


def main(smk, progress):
    run_datastore_summary(experiment_of(smk.output[0]), simulated=smk.params.simulated, progress=progress)


run_job(snakemake, main)  # noqa: F821 (injected by Snakemake)

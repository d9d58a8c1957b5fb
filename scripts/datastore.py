"""Rule datastore: summarize every stage's markers into datastore.json."""
from merfishflow.workflow.jobs import run_job
from merfishflow.io.paths import experiment_of
from merfishflow.io.metadata import load_experiment
from merfishflow.workflow.status import write_datastore_json


def main(smk, progress):
    experiment = load_experiment(experiment_of(smk.output[0]), check_tiffs=False)
    path = write_datastore_json(experiment, experiment_of(smk.output[0]), simulated=smk.params.simulated)
    progress(f"wrote {path}")


run_job(snakemake, main)  # noqa: F821 (injected by Snakemake)

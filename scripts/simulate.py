"""Rule simulate: write a simulated experiment's raw_data/ and ground_truth/."""
from merfishflow.workflow.jobs import run_job
from merfishflow.io.paths import experiment_of
from merfishflow.simulation import simulate_experiment


def main(smk, progress):
    simulate_experiment(experiment_of(smk.output[0]), smk.params.simulation, progress=progress, overwrite=True)


run_job(snakemake, main)  # noqa: F821 (injected by Snakemake)

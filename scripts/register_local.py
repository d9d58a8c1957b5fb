"""Rule register_local: every round of one tile onto its round 0; readouts follow their round."""
from merfishflow.workflow.jobs import run_job
from merfishflow.io.paths import experiment_of
from merfishflow.stages.register import RegistrationParams, run_register_local


def main(smk, progress):
    run_register_local(experiment_of(smk.output[0]), smk.wildcards.tile, RegistrationParams(**smk.params.registration),
                       progress=progress, threads=smk.threads)


run_job(snakemake, main)  # noqa: F821 (injected by Snakemake)

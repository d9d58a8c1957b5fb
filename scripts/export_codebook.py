"""Rule export_starfish_codebook: the codebook as starfish's codebook JSON."""
from merfishflow.io.paths import experiment_of
from merfishflow.stages.export import run_export_codebook
from merfishflow.workflow.jobs import run_job


def main(smk, progress):
    run_export_codebook(experiment_of(smk.output[0]), smk.output[0], progress=progress)


run_job(snakemake, main)  # noqa: F821 (injected by Snakemake)

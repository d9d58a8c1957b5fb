"""Rule export_starfish_codebook: the codebook as starfish's codebook JSON."""
from merfishflow.io.export import export_starfish_codebook
from merfishflow.workflow.jobs import run_job
from merfishflow.io.paths import experiment_of


def main(smk, progress):
    progress(f"wrote {export_starfish_codebook(experiment_of(smk.output[0]), smk.output[0])}")


run_job(snakemake, main)  # noqa: F821 (injected by Snakemake)

"""Rule export_spacetx: a registered tile as a SpaceTx experiment that starfish opens."""
from pathlib import Path

from merfishflow.io.paths import experiment_of
from merfishflow.stages.export import run_export_spacetx
from merfishflow.workflow.jobs import run_job


def main(smk, progress):
    run_export_spacetx(experiment_of(smk.output[0]), smk.wildcards.tile, Path(smk.output[0]).parent,
                       progress=progress)


run_job(snakemake, main)  # noqa: F821 (injected by Snakemake)

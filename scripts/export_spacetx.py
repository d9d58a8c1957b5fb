"""Rule export_spacetx: a registered tile as a SpaceTx experiment that starfish opens."""
from pathlib import Path

from merfishflow.io.export import export_spacetx
from merfishflow.workflow.jobs import run_job
from merfishflow.io.paths import experiment_of


def main(smk, progress):
    written = export_spacetx(experiment_of(smk.output[0]), smk.wildcards.tile, Path(smk.output[0]).parent)
    progress(f"wrote {written.experiment} and {len(written.tiles)} plane TIFFs")


run_job(snakemake, main)  # noqa: F821 (injected by Snakemake)

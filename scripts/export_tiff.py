"""Rules export_imagej / export_ome: a registered tile as a multi-page TIFF hyperstack."""
from merfishflow.io.export import export_tile_tiff
from merfishflow.workflow.jobs import run_job
from merfishflow.io.paths import experiment_of


def main(smk, progress):
    kind = "ome" if smk.rule == "export_ome" else "imagej"
    path = export_tile_tiff(experiment_of(smk.output[0]), smk.wildcards.tile, smk.output[0], kind=kind,
                            what=smk.wildcards.what)
    progress(f"wrote {path}")


run_job(snakemake, main)  # noqa: F821 (injected by Snakemake)

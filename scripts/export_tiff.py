"""Rules export_imagej / export_ome: a registered tile as a multi-page TIFF hyperstack."""
from merfishflow.io.paths import experiment_of
from merfishflow.stages.export import run_export_tiff
from merfishflow.workflow.jobs import run_job


def main(smk, progress):
    kind = "ome" if smk.rule == "export_ome" else "imagej"
    run_export_tiff(experiment_of(smk.output[0]), smk.wildcards.tile, smk.output[0], kind=kind,
                    what=smk.wildcards.what, progress=progress)


run_job(snakemake, main)  # noqa: F821 (injected by Snakemake)

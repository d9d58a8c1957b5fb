"""Rule export_ome_zarr: a tile's OME-Zarr view (registered rounds and bits, corrected fiducial, cell labels)."""
from pathlib import Path

from merfishflow.io.paths import experiment_of
from merfishflow.stages.interop import export_ome_zarr
from merfishflow.workflow.jobs import run_job


def main(smk, progress):
    out = export_ome_zarr(experiment_of(smk.output[0]), smk.wildcards.tile, Path(smk.output[0]).parent,
                          pyramid_max_px=smk.params.pyramid_max_px, threads=smk.threads)
    progress(f"wrote {out}")


run_job(snakemake, main)  # noqa: F821 (injected by Snakemake)

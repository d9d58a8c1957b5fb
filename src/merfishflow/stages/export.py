"""The export stages (made on request, config key ``exports``): registered tiles in other tools' formats.

Each reads the datastore (checked complete) and writes one finished file or
folder through :mod:`merfishflow.io.export`, which owns the formats
(docs/exports.md).
"""

from __future__ import annotations

from pathlib import Path

from ..io.export import export_spacetx, export_starfish_codebook, export_tile_tiff


def run_export_tiff(experiment_dir, tile, out_path, *, kind="imagej", what="readouts", progress=print) -> Path:
    """One tile's registered channels as a multi-page TIFF hyperstack (``kind``: ``imagej`` or ``ome``)."""
    path = export_tile_tiff(experiment_dir, tile, out_path, kind=kind, what=what)
    progress(f"wrote {path}")
    return path


def run_export_spacetx(experiment_dir, tile, out_dir, progress=print):
    """One tile as a SpaceTx experiment that starfish opens, in ``out_dir``."""
    written = export_spacetx(experiment_dir, tile, Path(out_dir))
    progress(f"wrote {written.experiment} and {len(written.tiles)} plane TIFFs")
    return written


def run_export_codebook(experiment_dir, out_path, progress=print) -> Path:
    """The codebook as starfish's codebook JSON."""
    path = export_starfish_codebook(experiment_dir, out_path)
    progress(f"wrote {path}")
    return path

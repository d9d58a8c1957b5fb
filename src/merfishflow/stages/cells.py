"""The segment and assign stages: cell masks per tile, then spots to cells and cell x gene counts.

segment (per tile): :func:`merfishflow.cells.segmentation.segment_cells` on the
tile's round-0 fiducial (camera-corrected by default, ``segmentation.image``;
round 0 is the registration reference), written as a versioned mask file
(``segmentation/<tile>_cells.mfmask``, docs/masks.md) placed by the tile's
global registration.

assign (experiment): cells merged across tile overlaps
(:mod:`merfishflow.cells.assignment`), every filtered spot given a ``cell_id``, and
the counts written as 10x-style Matrix Market files and an AnnData ``.h5ad``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from skimage.segmentation import relabel_sequential

from ..io import datastore
from ..cells.assignment import AssignmentParams, assign_spots, count_matrix, merge_cells
from ..errors import InputError
from ..spots.filtering import starfish_table
from ..io.masks import read_masks, write_masks
from ..io.paths import CORRECTED_DATA, SEGMENTATION_IMAGES, ExperimentPaths
from ..cells.segmentation import SegmentationParams, segment_cells
from ..image.stitching import DEFAULT_CONTEXT_UM
from ..cells.canvas import assemble_canvas
from ..io.tables import (BLANK_PREFIX, read_metadata, spot_schema, write_counts, write_spot_table, write_table_csv,
                         write_table_parquet)


def fiducial_source(paths, tile, image):
    """``(open, owner)`` of ``tile``'s round-0 fiducial that ``image`` names
    (:meth:`~merfishflow.io.paths.ExperimentPaths.segmentation_source`): a function returning its tensorstore
    handle, and the group or array whose marker's digest records the version read."""
    owner = paths.segmentation_source(tile, image)
    if image == "corrected":
        return (lambda: datastore.open_array(owner, CORRECTED_DATA)), owner
    return (lambda: datastore.open_marked_array(owner)), owner


def context_canvas(paths, tile, tiles, margin_um, image=SEGMENTATION_IMAGES[0]):
    """:func:`assemble_canvas` of the round-0 fiducials (``image``: :data:`~merfishflow.io.paths.SEGMENTATION_IMAGES`), placed by
    global registration.

    Returns
    -------
    canvas : ndarray of float32
    margin_px : int
        Where ``tile`` starts in the canvas, in y and x.
    used : dict
        Tile name -> marker digest of every fiducial that was read.
    placement : dict
        ``tile``'s global registration marker.
    """
    placements = {t: datastore.read_marker(paths.global_registration(t)) for t in tiles}
    placement = placements[tile]
    voxel = np.asarray(placement["spacing_zyx_um"], dtype=np.float64)
    margin_px = int(round(margin_um / voxel[1]))
    source = {t: fiducial_source(paths, t, image) for t in tiles}
    shape = tuple(int(n) for n in source[tile][0]().shape)

    def read_window(index, window):
        open_handle, owner = source[tiles[index]]
        handle = open_handle()
        if tuple(handle.shape) != shape:
            raise InputError(f"{owner}: shape {tuple(handle.shape)} differs from {tile}'s {shape}")
        return datastore.read_region(handle, window, what=str(owner))

    origins = [placements[t]["origin_zyx_um"] for t in tiles]
    canvas, used = assemble_canvas(tiles.index(tile), origins, shape, voxel, margin_px, read_window)
    return canvas, margin_px, {tiles[i]: datastore.marker_digest(source[tiles[i]][1]) for i in used}, placement


def run_segment(experiment_dir, tile, params=SegmentationParams(), tiles=None,
                context_um=DEFAULT_CONTEXT_UM, image=SEGMENTATION_IMAGES[0], progress=print) -> Path:
    """Segment one tile's round-0 fiducial into ``segmentation/<tile>_cells.mfmask``.

    ``image`` is ``"corrected"`` (camera-corrected, the default) or
    ``"deconvolved"`` (the registered, deconvolved fiducial); see :data:`~merfishflow.io.paths.SEGMENTATION_IMAGES`.

    The tile is segmented with a band of ``context_um`` of its neighbours
    around it (:func:`context_canvas`; ``tiles`` lists every tile of the
    experiment that may be near it, default just this one), then cropped back: a cell cut by the
    tile's edge is split and shaped as it is in the tissue, and the two
    tiles of an overlap label it alike.
    """
    paths = ExperimentPaths(experiment_dir)
    if isinstance(context_um, bool) or not isinstance(context_um, (int, float)) or not 0 <= context_um < 1e4:
        raise InputError(f"segmentation.context_um: expected a number of µm >= 0, got {context_um!r}")
    tiles = list(tiles) if tiles else [tile]
    if tile not in tiles:
        raise InputError(f"segment {tile}: the tiles given for context ({tiles}) must include the tile itself")
    canvas, m, used, placement = context_canvas(paths, tile, tiles, context_um, image)
    voxel = placement["spacing_zyx_um"]
    progress(f"{tile}: segmenting with {len(used) - 1} neighbour(s) in a {context_um} um band, canvas {canvas.shape}")
    labels = segment_cells(canvas, voxel, params, progress=progress)
    del canvas
    labels = labels[:, m:labels.shape[1] - m, m:labels.shape[2] - m]
    labels, _, _ = relabel_sequential(labels)
    labels = labels.astype(np.uint32, copy=False)
    metadata = datastore.stage_record(
        "segment", {**params.to_dict(), "context_um": context_um, "image": image},
        {"fiducials": dict(sorted(used.items())), "placement": datastore.marker_digest(paths.global_registration(tile))})
    out = paths.cell_masks(tile)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_masks(out, labels, voxel, placement["origin_zyx_um"], tile=tile, metadata=metadata)
    progress(f"{tile}: {int(labels.max())} cells -> {out.name}")
    return out


def run_assign(experiment_dir, tiles, min_shared_fraction=AssignmentParams.min_shared_fraction,
               expand_um=AssignmentParams.expand_um, progress=print) -> dict:
    """Merge cells across tiles, give every filtered spot its cell (or the nearest within ``expand_um``), count."""
    paths = ExperimentPaths(experiment_dir)
    calibration = datastore.read_marker(paths.calibrations)
    # Cell ids, centroids and volumes of every tile; the masks themselves are
    # read again when a tile's labels are needed, so memory does not grow with the tiles.
    mask_sets = [read_masks(paths.cell_masks(t)).without_masks() for t in tiles]
    cache = {}

    def load_labels(t):
        # The two most recent tiles stay in memory (pairs are visited tile by tile).
        if t not in cache:
            if len(cache) >= 2:
                cache.pop(next(iter(cache)))
            cache[t] = read_masks(paths.cell_masks(tiles[t])).to_labels()
        return cache[t]

    cells = merge_cells(mask_sets, load_labels, min_shared_fraction, progress=progress)
    spots = pq.read_table(paths.filtered_spots).to_pandas()
    spots["cell_id"] = assign_spots(spots, load_labels, cells, expand_um, calibration["voxel_size_zyx_um"])
    genes = [g for g in calibration["exp_codebook"]["gene_id"] if not g.startswith(BLANK_PREFIX)]
    cell_ids = cells.table["cell_id"].to_numpy()
    cell_names = [f"cell{c:07d}" for c in cell_ids]
    matrix = count_matrix(spots, cell_ids, genes)
    inside = int((spots["cell_id"] > 0).sum())
    progress(f"{len(cell_ids)} cells ({int((cells.table['n_instances'] > 1).sum())} span a tile overlap), "
             f"{inside} of {len(spots)} spots inside a cell, {int(matrix.sum())} counted")
    digests = [datastore.file_digest(paths.cell_masks(t)) for t in tiles] + [datastore.file_digest(paths.filtered_spots)]
    metadata = datastore.stage_record(
        "assign", {"min_shared_fraction": min_shared_fraction, "expand_um": expand_um},
        datastore.combined_digest(digests), filter=read_metadata(paths.filtered_spots).get("report"))
    n_bits = len(calibration["exp_codebook"]["bits"])
    schema = spot_schema(n_bits).append(pa.field("cell_id", pa.int32()))
    write_spot_table(paths.assigned_spots, spots, schema, metadata)
    write_table_csv(paths.assigned_spots_csv, starfish_table(spots, calibration["voxel_size_zyx_um"]))
    write_table_parquet(paths.cells_table, cells.table)
    blanks = spots.loc[spots["is_blank"].to_numpy(bool) & (spots["cell_id"].to_numpy() > 0), "cell_id"]
    n_blank = blanks.value_counts().reindex(cell_ids, fill_value=0).to_numpy(np.int32)
    write_counts(paths.counts_files(), matrix, cell_names, genes, cells.table, n_blank_spots=n_blank,
                 provenance=metadata)
    return {"n_cells": len(cell_ids), "n_spots_in_cells": inside}

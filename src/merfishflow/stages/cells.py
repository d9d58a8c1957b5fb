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

import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scipy import ndimage as ndi
from skimage.segmentation import relabel_sequential

from ..io import datastore
from ..cells.assignment import assign_spots, count_matrix, merge_cells
from ..errors import InputError
from ..io.fileio import atomic
from ..spots.filtering import starfish_table
from ..io.masks import read_masks, write_masks
from ..io.paths import CORRECTED_DATA, SEGMENTATION_IMAGES, ExperimentPaths
from ..cells.segmentation import SegmentationParams, segment_cells
from ..image.stitching import DEFAULT_CONTEXT_UM, context_windows
from .decode import BLANK_PREFIX, read_metadata, spot_schema, write_spot_table


def fill_from_nearest(canvas, known):
    """Give every unknown voxel of ``canvas`` the value of the nearest known one (in place).

    Whole (y, x) columns without data take the nearest column that has data
    (2D Euclidean distance, so the cost stays 2D); the few voxels left at the
    top or bottom of a column (a neighbour shifted in z) take the nearest
    known plane of their column.
    """
    if known.all():
        return canvas
    columns = known.any(axis=0)
    if not columns.any():
        raise ValueError("fill_from_nearest: nothing known")
    if not columns.all():
        nearest = ndi.distance_transform_edt(~columns, return_distances=False, return_indices=True)
        missing = ~columns
        canvas[:, missing] = canvas[:, nearest[0][missing], nearest[1][missing]]
        known[:, missing] = known[:, nearest[0][missing], nearest[1][missing]]
    if not known.all():
        planes = np.arange(canvas.shape[0])[:, None, None]
        below = np.maximum.accumulate(np.where(known, planes, -1), axis=0)
        above = np.minimum.accumulate(np.where(known, planes, canvas.shape[0])[::-1], axis=0)[::-1]
        take = np.where(below >= 0, below, above)
        rows, cols = np.indices(canvas.shape[1:])
        canvas[:] = canvas[take, rows[None], cols[None]]
    return canvas


def assemble_canvas(center, origins_um, shape_zyx, voxel_size_zyx_um, margin_yx_px, read_window):
    """Tile ``center`` with a band of its neighbours around it, as one float32 volume.

    Every tile is placed at its origin (rounded to whole voxels); where tiles
    overlap, ``center``'s own data wins, then lower tile indices. Where no
    tile was imaged the nearest imaged voxel is repeated
    (:func:`fill_from_nearest`), so the experiment's outer edge behaves like
    an array edge.

    Parameters
    ----------
    center : int
    origins_um : array-like, shape (n_tiles, 3)
    shape_zyx : sequence of 3 int
        Shape of every tile.
    voxel_size_zyx_um : sequence of 3 float
    margin_yx_px : int
    read_window : callable(int, tuple of slice) -> ndarray
        The given window of tile ``index``'s image.

    Returns
    -------
    canvas : ndarray of float32, shape (z, y + 2 m, x + 2 m)
    used : list of int
        Tiles that were read, ``center`` first.
    """
    canvas_shape, windows = context_windows(origins_um, center, shape_zyx, voxel_size_zyx_um, margin_yx_px)
    canvas = np.zeros(canvas_shape, dtype=np.float32)
    known = np.zeros(canvas_shape, dtype=bool)
    for index, in_canvas, in_tile in windows:
        piece = np.asarray(read_window(index, in_tile), dtype=np.float32)
        empty = ~known[in_canvas]
        region = canvas[in_canvas]
        region[empty] = piece[empty]
        known[in_canvas] = True
    fill_from_nearest(canvas, known)
    return canvas, [index for index, _, _ in windows]


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


def segment_tile_stage(experiment_dir, tile, params=SegmentationParams(), tiles=None,
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
    metadata = {"stage": "segment", "software": datastore.software_versions(),
                "parameters": {**params.to_dict(), "context_um": context_um, "image": image},
                "inputs_sha256": {"fiducials": dict(sorted(used.items())),
                                  "placement": datastore.marker_digest(paths.global_registration(tile))}}
    out = paths.cell_masks(tile)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_masks(out, labels, voxel, placement["origin_zyx_um"], tile=tile, metadata=metadata)
    progress(f"{tile}: {int(labels.max())} cells -> {out.name}")
    return out


def _gzip_text(path: Path, text: str) -> Path:
    # mtime=0 and no file name in the header: the same text gives the same bytes.
    def write(temp):
        with open(temp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as f:
            f.write(text.encode("utf-8"))
    return atomic(path, write)


def _matrix_market(matrix) -> str:
    """Matrix Market coordinate format of a genes x cells matrix (10x orientation), 1-based."""
    coo = matrix.tocoo()
    order = np.lexsort((coo.row, coo.col))
    lines = ["%%MatrixMarket matrix coordinate integer general",
             f"{matrix.shape[0]} {matrix.shape[1]} {coo.nnz}"]
    lines += [f"{r + 1} {c + 1} {v}" for r, c, v in zip(coo.row[order], coo.col[order], coo.data[order])]
    return "\n".join(lines) + "\n"


def write_counts(counts_dir: Path, matrix, cell_names, genes, cell_table: pd.DataFrame, *, n_blank_spots=None,
                 provenance=None) -> dict:
    """10x-style ``matrix.mtx.gz``/``barcodes.tsv.gz``/``features.tsv.gz`` and ``cell_by_gene.h5ad``.

    The h5ad's ``obs`` holds the integer ``cell_id``, the cell table's scalar columns and
    ``n_blank_spots`` (blank-barcode spots inside each cell: the per-cell false-positive check);
    ``uns["merfishflow"]`` the stage's ``provenance`` (parameters, software, input digests).
    """
    import anndata as ad

    counts_dir.mkdir(parents=True, exist_ok=True)
    out = {
        "matrix": _gzip_text(counts_dir / "matrix.mtx.gz", _matrix_market(matrix.T.tocsr())),
        "barcodes": _gzip_text(counts_dir / "barcodes.tsv.gz", "".join(f"{c}\n" for c in cell_names)),
        "features": _gzip_text(counts_dir / "features.tsv.gz",
                               "".join(f"{g}\t{g}\tGene Expression\n" for g in genes)),
    }
    # List columns (the instance mapping) stay in cells.parquet: h5ad obs holds scalars only.
    obs = cell_table[[c for c in cell_table.columns if cell_table[c].dtype != object or c == "tiles"]].copy()
    obs["cell_id"] = obs["cell_id"].astype(np.int32)
    if n_blank_spots is not None:
        obs["n_blank_spots"] = np.asarray(n_blank_spots, np.int32)
    obs.index = pd.Index(cell_names, name="cell")
    adata = ad.AnnData(X=matrix.astype(np.int32), obs=obs, var=pd.DataFrame(index=pd.Index(genes, name="gene")))
    adata.obsm["spatial"] = cell_table[["centroid_x_um", "centroid_y_um", "centroid_z_um"]].to_numpy(np.float64)
    adata.uns["spatial_axes"] = ["x_um", "y_um", "z_um"]
    if provenance is not None:
        adata.uns["merfishflow"] = json.dumps(provenance, sort_keys=True)
    out["h5ad"] = atomic(counts_dir / "cell_by_gene.h5ad", lambda p: adata.write_h5ad(p))
    return out


def assign_experiment(experiment_dir, tiles, min_shared_fraction=0.5, expand_um=0.3, progress=print) -> dict:
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
    metadata = {"stage": "assign", "software": datastore.software_versions(),
                "parameters": {"min_shared_fraction": min_shared_fraction, "expand_um": expand_um},
                "inputs_sha256": hashlib.sha256("".join(digests).encode()).hexdigest(),
                "filter": read_metadata(paths.filtered_spots).get("report")}
    n_bits = len(calibration["exp_codebook"]["bits"])
    schema = spot_schema(n_bits).append(pa.field("cell_id", pa.int32()))
    write_spot_table(paths.assigned_spots, spots, schema, metadata)
    csv = starfish_table(spots, calibration["voxel_size_zyx_um"])
    atomic(paths.assigned_spots_csv, lambda p: csv.to_csv(p, index=False, float_format="%.6g", lineterminator="\n"))
    table_path = paths.cells_table
    cell_table = pa.Table.from_pandas(cells.table, preserve_index=False)
    atomic(table_path, lambda p: pq.write_table(cell_table, p, compression="zstd"))
    blanks = spots.loc[spots["is_blank"].to_numpy(bool) & (spots["cell_id"].to_numpy() > 0), "cell_id"]
    n_blank = blanks.value_counts().reindex(cell_ids, fill_value=0).to_numpy(np.int32)
    write_counts(paths.counts, matrix, cell_names, genes, cells.table, n_blank_spots=n_blank, provenance=metadata)
    return {"n_cells": len(cell_ids), "n_spots_in_cells": inside}

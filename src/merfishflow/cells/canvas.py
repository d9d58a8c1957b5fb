"""A tile with a band of its neighbours around it, as one volume: what a tile is segmented on.

Segmenting a tile together with its neighbours' edges shapes a cell cut by the
tile's border as it is in the tissue, and lets the two tiles of an overlap
label it alike (docs/masks.md, "Context").
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ..image.stitching import context_windows


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

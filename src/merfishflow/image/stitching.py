"""Global registration: refine tile positions from the overlaps of their round-0 fiducials.

For every pair of tiles whose nominal footprints overlap, the overlap is cut
from both tiles (by the nominal stage positions) and phase-correlated; the
measured offset is how much tile j's stage error exceeds tile i's. A weighted
least-squares solve over all pairs, with the mean correction fixed at zero
(absolute position is not observable from images), gives every tile's
refined position. Pairs whose correlation is too weak to trust are left out
(and reported); a tile left with no usable neighbour is an error.

The result follows the convention of multiview-stitcher / spatial-image: each
tile has ``origin_zyx_um`` (global position of its voxel (0, 0, 0)),
``spacing_zyx_um`` (the voxel size) and ``affine_zyx_um``, the 4 x 4
homogeneous matrix taking tile-local physical coordinates ``p * spacing`` to
global µm (a pure translation by the origin here).

multiview-stitcher does this too (and rotations), but it brings dask, xarray
and spatial-image for what is, for translation-only stage errors, one phase
correlation per pair and a small linear solve.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError

# Phase correlation peaks below this normalized height are noise.
MIN_PAIR_SCORE = 0.05


@dataclass(frozen=True)
class PairOffset:
    """The measured offset of one overlapping pair (i < j)."""

    i: int
    j: int
    offset_um: np.ndarray  # stage error of j minus stage error of i, zyx µm
    score: float           # normalized phase-correlation peak height, 0..1
    overlap_voxels: int
    used: bool


@dataclass(frozen=True)
class GlobalRegistration:
    """Refined tile positions and the pairwise measurements behind them."""

    origin_zyx_um: np.ndarray  # (n_tiles, 3)
    spacing_zyx_um: np.ndarray  # (3,)
    pairs: list
    residual_rms_um: float

    def affine_zyx_um(self, tile: int) -> np.ndarray:
        """4 x 4 matrix: global µm = affine @ [p * spacing, 1]."""
        affine = np.eye(4)
        affine[:3, 3] = self.origin_zyx_um[tile]
        return affine


def overlap_slices(position_i_um, position_j_um, shape_zyx, voxel_size_zyx_um, shape_j_zyx=None):
    """Where the nominal footprints of tiles i and j overlap, in each tile's pixels.

    Parameters
    ----------
    position_i_um, position_j_um : sequence of 3 float
        Global position of each tile's voxel (0, 0, 0), µm.
    shape_zyx : sequence of 3 int
        Shape of tile i (and of tile j unless ``shape_j_zyx`` is given).
    voxel_size_zyx_um : sequence of 3 float
    shape_j_zyx : sequence of 3 int, optional

    Returns
    -------
    (tuple of slice, tuple of slice) or None
        Index of the overlap in tile i and in tile j (same shape), or None if
        they do not overlap. Positions are rounded to whole voxels.
    """
    shape = np.asarray(shape_zyx)
    shape_j = shape if shape_j_zyx is None else np.asarray(shape_j_zyx)
    delta = np.rint((np.asarray(position_j_um) - np.asarray(position_i_um)) / np.asarray(voxel_size_zyx_um))
    delta = delta.astype(int)  # tile j's origin in tile i's pixels
    lo = np.maximum(0, delta)
    hi = np.minimum(shape, delta + shape_j)
    if np.any(hi - lo < 1):
        return None
    in_i = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    in_j = tuple(slice(int(a - d), int(b - d)) for a, b, d in zip(lo, hi, delta))
    return in_i, in_j


# Neighbour band around a tile when segmenting (segmentation.context_um): on
# the simulator's cells (radius 3.5 µm) 3 µm scored best of 0-6 µm together with
# fragment merging (docs/masks.md, 'Accuracy'). Here, in a light module, because
# the workflow reads it at parse time.
DEFAULT_CONTEXT_UM = 3.0


def context_windows(origins_um, center, shape_zyx, voxel_size_zyx_um, margin_yx_px):
    """Which part of every tile falls in a canvas around tile ``center``.

    The canvas is tile ``center``'s voxel grid grown by ``margin_yx_px`` on
    every side in y and x (same z range): the tile plus a band of its
    neighbours, so that an algorithm that needs context (a cell cut by the
    tile's edge) sees it. Positions are rounded to whole voxels.

    Parameters
    ----------
    origins_um : array-like, shape (n_tiles, 3)
        Global position (z, y, x) of every tile's voxel (0, 0, 0), µm.
    center : int
        Index of the tile the canvas is built around.
    shape_zyx : sequence of 3 int
        Shape of every tile.
    voxel_size_zyx_um : sequence of 3 float
    margin_yx_px : int
        Band width in y and x, voxels (>= 0).

    Returns
    -------
    canvas_shape : tuple of 3 int
    windows : list of (int, tuple of slice, tuple of slice)
        ``(tile index, index in the canvas, index in that tile)`` for every
        tile overlapping the canvas, ``center`` first, then by tile index.
    """
    origins = np.asarray(origins_um, dtype=np.float64).reshape(-1, 3)
    voxel = np.asarray(voxel_size_zyx_um, dtype=np.float64)
    margin = np.array([0, int(margin_yx_px), int(margin_yx_px)])
    canvas_shape = tuple(int(n) for n in np.asarray(shape_zyx) + 2 * margin)
    canvas_origin = origins[center] - margin * voxel
    windows = []
    for index in [center] + [i for i in range(len(origins)) if i != center]:
        found = overlap_slices(canvas_origin, origins[index], canvas_shape, voxel, shape_j_zyx=shape_zyx)
        if found is not None:
            windows.append((index, found[0], found[1]))
    return canvas_shape, windows


def _prepare(image):
    from scipy.signal.windows import tukey

    image = np.asarray(image, dtype=np.float32)
    image = image - image.mean()
    # Taper the borders so the crop edges do not pull the peak toward zero shift.
    for axis, n in enumerate(image.shape):
        if n > 2:
            shape = [1] * image.ndim
            shape[axis] = n
            image = image * tukey(n, 0.5).astype(np.float32).reshape(shape)
    return image


def pair_offset(image_i, image_j, position_i_um, position_j_um, voxel_size_zyx_um, *, upsample_factor=20,
                min_overlap_px=8, iterations=3):
    """Phase-correlate the overlap of two tiles, re-cutting the overlap at each refined offset.

    Stage errors of several pixels shrink the content two nominal crops have
    in common; after each estimate the crops are cut again where the tiles
    really overlap, and the residual shift is added, until it is below a
    pixel.

    Parameters
    ----------
    image_i, image_j : ndarray (Z, Y, X)
        Round-0 fiducial images of the two tiles.
    position_i_um, position_j_um : sequence of 3 float
        Nominal stage positions.
    voxel_size_zyx_um : sequence of 3 float

    Returns
    -------
    (offset_um, score, n_voxels) or None
        ``offset_um`` is (stage error of j) - (stage error of i); ``score`` the
        normalized cross-correlation of the aligned overlaps; None if the
        overlap is narrower than ``min_overlap_px`` in y or x.
    """
    from scipy.ndimage import shift as nd_shift
    from skimage.registration import phase_cross_correlation

    voxel = np.asarray(voxel_size_zyx_um, dtype=np.float64)
    position_i = np.asarray(position_i_um, dtype=np.float64)
    position_j = np.asarray(position_j_um, dtype=np.float64)
    total = np.zeros(3)
    for _ in range(iterations):
        whole = np.rint(total)
        found = overlap_slices(position_i, position_j + whole * voxel, image_i.shape, voxel)
        if found is None:
            return None
        in_i, in_j = found
        crop_i, crop_j = image_i[in_i], image_j[in_j]
        if min(crop_i.shape[1:]) < min_overlap_px:
            return None
        a, b = _prepare(crop_i), _prepare(crop_j)
        residual, _, _ = phase_cross_correlation(a, b, upsample_factor=upsample_factor)
        total = whole + np.asarray(residual, dtype=np.float64)
        if np.all(np.abs(residual) < 0.5):
            break
    moved = nd_shift(b, residual, order=1, mode="constant")
    denominator = np.sqrt(float((a * a).sum()) * float((moved * moved).sum()))
    score = float((a * moved).sum() / denominator) if denominator > 0 else 0.0
    # reference(c) = moving(c - shift): a point at crop_i c sits at crop_j c - shift,
    # so shift * voxel = error_j - error_i.
    return total * voxel, score, int(crop_i.size)


def solve_positions(nominal_um, pairs, spacing_zyx_um) -> GlobalRegistration:
    """Weighted least squares for the per-tile corrections from the used pairs.

    Parameters
    ----------
    nominal_um : ndarray (n_tiles, 3)
    pairs : list of PairOffset
    spacing_zyx_um : sequence of 3 float

    Raises
    ------
    InputError
        If a tile has no usable overlapping neighbour (its position would be
        a guess), with the tile named.
    """
    nominal = np.asarray(nominal_um, dtype=np.float64)
    n = len(nominal)
    used = [p for p in pairs if p.used]
    if n > 1:
        connected = {p.i for p in used} | {p.j for p in used}
        lonely = [t for t in range(n) if t not in connected]
        if lonely:
            tried = [p for p in pairs if lonely[0] in (p.i, p.j)]
            why = (f"its overlaps with tiles {sorted({p.i if p.j == lonely[0] else p.j for p in tried})} "
                   f"correlate too weakly (scores {[round(p.score, 3) for p in tried]} < {MIN_PAIR_SCORE})"
                   if tried else "no other tile's nominal footprint overlaps it")
            raise InputError(f"tile{lonely[0]:04d}: no overlapping neighbour to register against: {why}; "
                             "check stage_positions.csv and tile_overlap_fraction")
        _check_connected(n, used)
    corrections = np.zeros((n, 3))
    residual = 0.0
    if used:
        rows = np.zeros((len(used) + 1, n))
        targets = np.zeros((len(used) + 1, 3))
        weights = np.ones(len(used) + 1)
        for k, p in enumerate(used):
            rows[k, p.j], rows[k, p.i] = 1.0, -1.0
            targets[k] = p.offset_um
            weights[k] = max(p.score, 1e-3)
        rows[-1, :] = 1.0 / n  # mean correction = 0
        sqrt_w = np.sqrt(weights)[:, None]
        corrections, *_ = np.linalg.lstsq(rows * sqrt_w, targets * sqrt_w, rcond=None)
        misfit = rows[:-1] @ corrections - targets[:-1]
        residual = float(np.sqrt(np.mean(np.sum(misfit ** 2, axis=1))))
    return GlobalRegistration(origin_zyx_um=nominal + corrections, spacing_zyx_um=np.asarray(spacing_zyx_um, float),
                              pairs=list(pairs), residual_rms_um=residual)


def union_find(n):
    """Disjoint sets of ``0..n-1``: returns ``(find, union)``; a set's root is its smallest member."""
    parent = list(range(n))

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def union(a, b):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    return find, union


def _check_connected(n, used):
    find, union = union_find(n)
    for p in used:
        union(p.i, p.j)
    groups = {find(t) for t in range(n)}
    if len(groups) > 1:
        first = sorted(t for t in range(n) if find(t) != find(0))
        raise InputError(f"tiles {[f'tile{t:04d}' for t in first]} are not connected to tile0000 by any chain of "
                         "registered overlaps; their relative position cannot be measured")


def register_tiles(images, nominal_um, voxel_size_zyx_um, *, min_score=MIN_PAIR_SCORE, progress=None):
    """Pairwise offsets of all overlapping tiles, then the global solve.

    Parameters
    ----------
    images : sequence of ndarray (Z, Y, X) or callable(int) -> ndarray
        Round-0 fiducial of each tile (a callable loads tile t on demand, so
        only two tiles are in memory at once).
    nominal_um : ndarray (n_tiles, 3)
        Stage positions from stage_positions.csv.
    voxel_size_zyx_um : sequence of 3 float

    Returns
    -------
    GlobalRegistration
    """
    nominal = np.asarray(nominal_um, dtype=np.float64)
    raw_load = images if callable(images) else (lambda t: images[t])

    def load(t):
        image = raw_load(t)
        if not np.ptp(image) > 0:
            raise InputError(f"tile{t:04d}: the round-0 fiducial image is blank (constant {float(image.flat[0])}); "
                             "nothing to register against")
        return image

    shape = np.asarray(load(0).shape)
    voxel = np.asarray(voxel_size_zyx_um, dtype=np.float64)
    extent = shape * voxel
    pairs = []
    for i in range(len(nominal)):
        image_i = None
        for j in range(i + 1, len(nominal)):
            distance = np.abs(nominal[j] - nominal[i])[1:]
            # Edge neighbours only: corner overlaps are too small to correlate reliably.
            if np.any(distance >= extent[1:]) or np.all(distance > 0.5 * extent[1:]):
                continue
            image_i = load(i) if image_i is None else image_i
            result = pair_offset(image_i, load(j), nominal[i], nominal[j], voxel)
            if result is None:
                continue
            offset, score, n_vox = result
            pairs.append(PairOffset(i, j, offset, score, n_vox, used=score >= min_score))
            if progress is not None:
                progress(f"tile{i:04d}-tile{j:04d}: offset {np.round(offset / voxel, 2).tolist()} px, score {score:.3f}")
    return solve_positions(nominal, pairs, voxel)

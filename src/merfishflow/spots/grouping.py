"""Decoded voxels into spots (step 4 of :mod:`merfishflow.spots.decoding`).

Every decoded voxel points to its brightest same-barcode neighbour (by the
magnitude sharpened with its scale-normalized Laplacian); the voxels that
climb to one local maximum are one spot, close peaks of one barcode merge,
and each spot gets a magnitude-weighted sub-voxel centroid (corrected at the
tile's edges), its mean distance, magnitude, area and per-bit intensities.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from .decoding import DecodingParams

# Columns of the spot sums carried between slabs (float64), then the per-bit intensity sums.
_AREA, _SW, _SWZ, _SWY, _SWX, _SD, _NFIX = 0, 1, 2, 3, 4, 5, 6


def spot_columns(n_bits: int) -> list[str]:
    """Column names of :attr:`DecodeResult.spots` for ``n_bits`` bits."""
    return (["barcode_id", "z_px", "y_px", "x_px", "distance", "magnitude", "area"]
            + [f"intensity_bit{b:03d}" for b in range(1, n_bits + 1)])


def _neighbour_offsets(connectivity):
    offsets = []
    for dz in (-1, 0, 1):
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if (dz, dy, dx) != (0, 0, 0) and abs(dz) + abs(dy) + abs(dx) <= connectivity:
                    offsets.append((dz, dy, dx))
    return offsets


def _segment(vox, shape, params: DecodingParams):
    """Spot id (0..K-1) of every decoded voxel.

    ``segmentation="peaks"``: every voxel points to its brightest neighbour
    (by magnitude; ties to the smaller flat index) among the voxels decoded to
    the same barcode, itself included; a spot is the set of voxels that
    climb to the same local maximum, so touching molecules of one gene are
    two spots. ``"components"``: connected components of same-barcode voxels.
    Neighbours per ``connectivity``. Only the sparse set of decoded voxels
    is used, so the result does not depend on the slabs.
    """
    Z, Y, X = shape
    g = vox["gidx"]
    n = g.size
    if n == 0:
        return np.zeros(0, np.int64), 0
    code, mag = vox["code"], vox["mag"]
    z, rem = np.divmod(g, Y * X)
    y, x = np.divmod(rem, X)
    var = None
    if params.segmentation == "peaks" and params.peak_sharpening > 0:
        mag, var = _sharpened(mag, vox["nb"], params.peak_sharpening)
    parent = np.arange(n)
    best = mag.astype(np.float64).copy()
    rows, cols = [], []
    for dz, dy, dx in _neighbour_offsets(params.connectivity):
        ok = (z + dz >= 0) & (z + dz < Z) & (y + dy >= 0) & (y + dy < Y) & (x + dx >= 0) & (x + dx < X)
        target = g + (dz * Y + dy) * X + dx
        pos = np.searchsorted(g, target)
        pos = np.minimum(pos, n - 1)
        found = ok & (g[pos] == target) & (code[pos] == code)
        if params.segmentation == "components":
            rows.append(np.flatnonzero(found))
            cols.append(pos[found])
            continue
        cand_mag = np.where(found, mag[pos], -np.inf)
        better = (cand_mag > best) | ((cand_mag == best) & found & (g[pos] < g[parent]))
        parent = np.where(better, pos, parent)
        best = np.where(better, cand_mag, best)
    if params.segmentation == "components":
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        r, c = np.concatenate(rows), np.concatenate(cols)
        graph = coo_matrix((np.ones(r.size, np.int8), (r, c)), shape=(n, n))
        n_seg, seg = connected_components(graph, directed=False)
        return seg.astype(np.int64), int(n_seg)
    parent = _resolve(parent)
    if var is not None and params.min_peak_separation > 0:
        parent = _merge_close_peaks(parent, np.stack([z, y, x], axis=1), code, mag, var,
                                    params.min_peak_separation)
    roots, seg = np.unique(parent, return_inverse=True)
    return seg.astype(np.int64), int(roots.size)


def _resolve(parent):
    """Follow ``parent`` pointers to their roots (pointer jumping)."""
    while True:
        grand = parent[parent]
        if np.array_equal(grand, parent):
            return parent
        parent = grand


def _spot_variances(mag, nb):
    """Per-axis variance (voxels^2) of the spots' magnitude profile, from the 3-point log curvature at maxima.

    A Gaussian profile ``m exp(-d^2 / 2v)`` has ``log(lo) - 2 log(m) + log(hi) = -1/v`` at its peak; the
    median over the voxels that are maxima of their 6 face neighbours is robust to the few pairs and
    noise peaks. 2.0 (about the deconvolved spot plus the low-pass) where there is no such maximum.
    """
    m = mag.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        peak = np.all(~(nb > mag[:, None]), axis=1) & np.all(np.isfinite(nb) & (nb > 0), axis=1)
        var = np.full(3, 2.0)
        for axis in range(3):
            curv = np.log(nb[peak, 2 * axis]) - 2 * np.log(m[peak]) + np.log(nb[peak, 2 * axis + 1])
            curv = curv[np.isfinite(curv) & (curv < 0)]
            if curv.size >= 10:
                var[axis] = float(np.median(-1.0 / curv))
    return var


def _sharpened(mag, nb, weight):
    """``m - weight * sum_a v_a d2_a(m) / 3``: the magnitude sharpened by its scale-normalized Laplacian.

    ``d2_a`` is the 3-point second difference along axis ``a`` from the stored face neighbours (0 where a
    neighbour is beyond the tile) and ``v_a`` the spot variance along that axis (:func:`_spot_variances`), so
    an isolated Gaussian spot keeps its single maximum (at its peak ``v_a d2_a m ~ -m``) while a fainter
    molecule on the flank of a brighter one of the same gene, a shoulder without a maximum of its own in
    ``m``, becomes a maximum: the Laplacian is a blob detector (Lindeberg's scale-normalized LoG).

    Returns
    -------
    sharpened : float64 ndarray
    var : float64 ndarray (3,)
    """
    var = _spot_variances(mag, nb)
    m = mag.astype(np.float64)
    nbf = np.where(np.isfinite(nb), nb, mag[:, None]).astype(np.float64)
    lap = np.zeros_like(m)
    for axis in range(3):
        lap += var[axis] * (nbf[:, 2 * axis] + nbf[:, 2 * axis + 1] - 2 * m)
    return m - weight * lap / 3.0, var


def _merge_close_peaks(parent, zyx, code, value, var, separation):
    """Join a peak's basin to the nearest higher same-barcode peak less than ``separation`` spot SDs away.

    The distance is in units of the measured spot SD per axis (``sqrt(var)``), so the rule adapts to the
    z step: two maxima closer than that are noise on one spot rather than two resolvable molecules.
    """
    from scipy.spatial import cKDTree

    roots = np.unique(parent)
    if roots.size < 2:
        return parent
    pos = zyx[roots] / (separation * np.sqrt(var))
    pairs = cKDTree(pos).query_pairs(1.0, output_type="ndarray")
    target = roots.copy()
    if len(pairs):
        pairs = pairs[code[roots[pairs[:, 0]]] == code[roots[pairs[:, 1]]]]
    if len(pairs):
        # Orient every pair from the lower peak (ties: the larger voxel index) to the higher one.
        a, b = pairs[:, 0], pairs[:, 1]
        va, vb = value[roots[a]], value[roots[b]]
        a_low = (va < vb) | ((va == vb) & (roots[a] > roots[b]))
        low, high = np.where(a_low, a, b), np.where(a_low, b, a)
        d2 = np.sum((pos[low] - pos[high]) ** 2, axis=1)
        # The nearest higher peak (ties: the smaller voxel index) of every lower peak.
        order = np.lexsort((roots[high], d2, low))
        first = order[np.r_[True, low[order][1:] != low[order][:-1]]]
        target[low[first]] = roots[high[first]]
    mapped = np.arange(parent.size)
    mapped[roots] = target
    mapped = _resolve(mapped)
    return mapped[parent]


def _spots_from_voxels(vox, shape, n_bits, params: DecodingParams):
    """Per-spot sums (the _AREA.. columns), barcode, and peak record (trace, magnitude, gidx, 6 neighbours)."""
    seg, n_seg = _segment(vox, shape, params)
    Z, Y, X = shape
    stats = np.zeros((n_seg, _NFIX + n_bits))
    codes = np.zeros(n_seg, np.int32)
    peaks = np.zeros((n_seg, n_bits + 8))
    if n_seg == 0:
        return stats, codes, peaks
    g = vox["gidx"]
    z, rem = np.divmod(g, Y * X)
    y, x = np.divmod(rem, X)
    w = vox["mag"].astype(np.float64)
    stats[:, _AREA] = np.bincount(seg, minlength=n_seg)
    stats[:, _SW] = np.bincount(seg, w, n_seg)
    stats[:, _SWZ] = np.bincount(seg, w * z, n_seg)
    stats[:, _SWY] = np.bincount(seg, w * y, n_seg)
    stats[:, _SWX] = np.bincount(seg, w * x, n_seg)
    stats[:, _SD] = np.bincount(seg, vox["dist"].astype(np.float64), n_seg)
    for b in range(n_bits):
        stats[:, _NFIX + b] = np.bincount(seg, vox["trace"][:, b].astype(np.float64), n_seg)
    order = np.lexsort((g, -w, seg))
    first = order[np.r_[True, seg[order][1:] != seg[order][:-1]]]
    codes[seg[first]] = vox["code"][first]
    peaks[seg[first], :n_bits] = vox["trace"][first]
    peaks[seg[first], n_bits] = w[first]
    peaks[seg[first], n_bits + 1] = g[first]
    peaks[seg[first], n_bits + 2:] = vox["nb"][first]
    return stats, codes, peaks


def _edge_positions(pos, peaks, n_bits, shape):
    """Replace the centroid along an axis where the brightest voxel is on the tile's border.

    A spot cut by the border has its centroid pulled inwards (up to ~1 voxel),
    and a molecule just outside the tile looks like one just inside. Along
    such an axis the position is the centre of a Gaussian through the peak and
    its one inner neighbour, with the Gaussian's width (per axis) measured by
    three-point fits on the spots whose peak has both neighbours.
    """
    m0 = np.maximum(peaks[:, n_bits], 1e-12)
    gidx = peaks[:, n_bits + 1].astype(np.int64)
    Z, Y, X = shape
    pz, rem = np.divmod(gidx, Y * X)
    py, px = np.divmod(rem, X)
    peak_pos = (pz, py, px)
    pos = pos.copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        for axis in range(3):
            lo = np.maximum(peaks[:, n_bits + 2 + 2 * axis], 1e-12 * m0)
            hi = np.maximum(peaks[:, n_bits + 3 + 2 * axis], 1e-12 * m0)
            lo = np.where(np.isnan(peaks[:, n_bits + 2 + 2 * axis]), np.nan, lo)
            hi = np.where(np.isnan(peaks[:, n_bits + 3 + 2 * axis]), np.nan, hi)
            curv = np.log(lo) - 2 * np.log(m0) + np.log(hi)
            good = np.isfinite(curv) & (curv < 0) & (lo <= m0) & (hi <= m0)
            if not good.any():
                continue
            var = float(np.median(-1.0 / curv[good]))
            at_lo = np.isnan(lo) & np.isfinite(hi) & (hi > 0)
            at_hi = np.isnan(hi) & np.isfinite(lo) & (lo > 0)
            p = peak_pos[axis].astype(np.float64)
            pos[at_lo, axis] = p[at_lo] + 0.5 - var * np.log(m0[at_lo] / hi[at_lo])
            pos[at_hi, axis] = p[at_hi] - 0.5 + var * np.log(m0[at_hi] / lo[at_hi])
    return pos


def _table(stats, codes, peaks, n_bits, params: DecodingParams, shape):
    area = stats[:, _AREA]
    keep = (area >= params.min_area) & (area <= params.max_area)
    if params.min_area_confident < params.min_area:
        # A small spot (few voxels to average) is kept only if it matches its codeword like a complete
        # trace: mean distance below that of an ideal trace with one dropped bit (0.518 for weight 4).
        mean_dist = stats[:, _SD] / np.maximum(area, 1)
        keep |= (area >= params.min_area_confident) & (mean_dist <= params.confident_distance)
    n_rejected = int((~keep).sum())
    stats, codes, area, peaks = stats[keep], codes[keep], area[keep], peaks[keep]
    sw = np.where(stats[:, _SW] > 0, stats[:, _SW], 1.0)
    a = np.where(area > 0, area, 1.0)
    pos = np.stack([stats[:, _SWZ] / sw, stats[:, _SWY] / sw, stats[:, _SWX] / sw], axis=1)
    if params.edge_correction and len(pos):
        pos = _edge_positions(pos, peaks, n_bits, shape)
    if params.drop_outside_frame and len(pos):
        inside = np.all((pos >= -0.5) & (pos < np.asarray(shape) - 0.5), axis=1)
        n_rejected += int((~inside).sum())
        stats, codes, area, peaks, pos, a = (stats[inside], codes[inside], area[inside], peaks[inside],
                                             pos[inside], a[inside])
    data = {
        "barcode_id": codes.astype(np.int32),
        "z_px": pos[:, 0],
        "y_px": pos[:, 1],
        "x_px": pos[:, 2],
        "distance": (stats[:, _SD] / a).astype(np.float32),
        "magnitude": (stats[:, _SW] / a).astype(np.float32),
        "area": area.astype(np.int32),
    }
    for b in range(n_bits):
        data[f"intensity_bit{b + 1:03d}"] = (stats[:, _NFIX + b] / a).astype(np.float32)
    df = pd.DataFrame(data, columns=spot_columns(n_bits))
    if len(df):
        order = np.lexsort((df["barcode_id"].to_numpy(), df["x_px"].to_numpy(), df["y_px"].to_numpy(),
                            df["z_px"].to_numpy()))
        df = df.iloc[order].reset_index(drop=True)
        peaks = peaks[order]
    return df, peaks, n_rejected

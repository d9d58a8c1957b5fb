"""Per-bit normalization (step 2 of :mod:`merfishflow.spots.decoding`): the initial estimate and one refinement.

Every bit ``b`` is mapped to ``max(0, (e_b - background_b) / scale_b)``; the
initial scale is the median of the bit's bright voxels, and a refinement
step re-estimates scale and background from the spots decoded with the
previous ones.
"""

from __future__ import annotations

import numpy as np


def _initial_normalization(cache, init_snr, max_samples=2**20):
    """Initial (scale, background): medians over a regular subsample of at most ``max_samples`` voxels per bit.

    The medians only seed the refinement; a regular subsample (deterministic) estimates them well and
    avoids sorting the whole tile. It is made of whole image rows (every ``step``-th (z, y) row), so that
    only the sampled memory is read (a voxel-strided sample reads every cache line) and ``cache`` may be a
    strided view (the refinement crop of a tile held whole) without being copied.
    """
    n_bits, nz, ny, nx = cache.shape
    scale = np.ones(n_bits)
    n_rows = nz * ny
    step = max(1, -(-n_rows * nx // max_samples))
    z_rows, y_rows = np.divmod(np.arange(0, n_rows, step), ny)
    for b in range(n_bits):
        flat = cache[b][z_rows, y_rows].reshape(-1)
        v = flat[flat > 0]
        if v.size == 0:
            continue
        sd = float(np.median(v)) / 0.6745  # half-normal: median = 0.6745 sd
        bright = v[v > init_snr * sd]
        if bright.size:
            scale[b] = float(np.median(bright))
        elif v.size:
            scale[b] = float(v.max())
    return scale, np.zeros(n_bits)


def _refine(barcode_ids, peaks, codewords, scale, background, min_spots):
    """New (scale, background) from the peak traces of decoded spots (unchanged for bits with too few)."""
    new_scale, new_bg = scale.copy(), background.copy()
    if len(barcode_ids) == 0:
        return new_scale, new_bg
    n_bits = codewords.shape[1]
    intens = np.asarray(peaks, np.float64)
    on = codewords[barcode_ids].astype(bool)
    for b in range(n_bits):
        off_b = intens[~on[:, b], b]
        if off_b.size >= min_spots:
            new_bg[b] = float(np.median(off_b))
        on_b = intens[on[:, b], b]
        if on_b.size >= min_spots:
            s = float(np.median(on_b)) - new_bg[b]
            if s > 0:
                new_scale[b] = s
    return new_scale, new_bg

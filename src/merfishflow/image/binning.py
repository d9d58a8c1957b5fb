"""Block means: an image binned by whole voxels, for steps that work at a coarser scale, and the linear
interpolation from the bins back to the voxels.

Registration's optical flow and the segmentation's cell split both run on
binned images: what they look for (deformations, cells) is many voxels
across, so the full resolution costs time and memory for nothing.
"""

from __future__ import annotations

import numpy as np

__all__ = ["binned_shape", "block_mean", "linear_weights"]

# Input planes converted and padded at a time: bounds the float32 temporaries of a large uint16 tile.
_CHUNK_VOXELS = 2**24


def binned_shape(full_shape, factors):
    """Shape of :func:`block_mean`'s result: each axis divided by its factor, rounded up."""
    return tuple(-(-int(n) // int(f)) for n, f in zip(full_shape, factors))


def block_mean(image, factors):
    """float32 mean over blocks of ``factors`` voxels.

    Parameters
    ----------
    image : ndarray, 3D, any real dtype
    factors : 3 positive ints (z, y, x)

    Returns
    -------
    ndarray of float32, shape ``binned_shape(image.shape, factors)``
        The last, partial block along an axis is padded with its edge values
        before averaging. Computed a few input planes at a time, so a large
        integer tile is never converted to float32 whole.
    """
    factors = tuple(int(f) for f in factors)
    image = np.asarray(image)
    if factors == (1, 1, 1):
        return image.astype(np.float32, copy=True)
    coarse = binned_shape(image.shape, factors)
    (cz, cy, cx), (fz, fy, fx) = coarse, factors
    out = np.empty(coarse, dtype=np.float32)
    plane_voxels = max(1, int(np.prod(image.shape[1:])))
    step = max(1, _CHUNK_VOXELS // (plane_voxels * fz))          # coarse planes per chunk
    for c0 in range(0, cz, step):
        c1 = min(cz, c0 + step)
        chunk = image[c0 * fz:c1 * fz].astype(np.float32)
        pad = [(0, (c1 - c0) * fz - chunk.shape[0])] + [(0, c * f - n) for c, f, n in
                                                        zip((cy, cx), (fy, fx), image.shape[1:])]
        if any(p[1] for p in pad):
            chunk = np.pad(chunk, pad, mode="edge")
        out[c0:c1] = chunk.reshape(c1 - c0, fz, cy, fy, cx, fx).mean(axis=(1, 3, 5), dtype=np.float32)
    return out


def linear_weights(n_full, n_coarse, factor, start=0, stop=None):
    """Linear interpolation from a grid binned by ``factor`` back to full positions ``start..stop-1``.

    Coarse sample ``j`` sits at the centre of its block, ``factor * j + (factor - 1) / 2``; positions beyond
    the first or last sample take that sample's value.

    Returns
    -------
    i0 : ndarray of intp
        The coarse sample at or left of each position (at most ``n_coarse - 2``).
    w : ndarray of float32
        The weight of sample ``i0 + 1`` (0 when there is one sample).
    """
    stop = n_full if stop is None else stop
    x = (np.arange(start, stop, dtype=np.float64) - (factor - 1) / 2.0) / factor
    x = np.clip(x, 0.0, n_coarse - 1)
    i0 = np.minimum(np.floor(x).astype(np.intp), max(n_coarse - 2, 0))
    w = (x - i0).astype(np.float32)
    if n_coarse == 1:
        w[:] = 0.0
    return i0, w

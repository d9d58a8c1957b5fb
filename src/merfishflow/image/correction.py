"""Camera correction: offset, gain and hot pixels (pure functions, numpy in and out).

A camera count ``c`` at pixel ``p`` becomes photoelectrons
``(c - offset[p]) * e_per_adu``, clipped at 0. The offset is the per-pixel
dark frame when one is given (sCMOS cameras have a per-pixel bias), else the
scalar ``camera.offset_adu``. Hot pixels, whose dark current is far above
their neighbours', carry shot noise of that dark current even after the
offset is subtracted, so their values are replaced by the median of their
non-hot neighbours in the same plane.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError

# 1.4826 * MAD is the standard deviation of a normal distribution.
MAD_TO_SD = 1.4826


def find_hot_pixels(dark_frame_adu, sigma=10.0, known=None):
    """Hot pixels of a camera: dark-frame outliers, plus a known map.

    Parameters
    ----------
    dark_frame_adu : ndarray (Y, X) or None
        Mean dark image in ADU. Pixels more than ``sigma`` robust standard
        deviations (1.4826 x MAD) above the frame's median are hot.
    sigma : float
        Threshold in robust standard deviations; ``inf`` disables detection.
    known : ndarray of bool (Y, X), optional
        Pixels known to be hot (``camera.hot_pixel_map``).

    Returns
    -------
    ndarray of bool, shape (Y, X)
    """
    if dark_frame_adu is None and known is None:
        raise InputError("find_hot_pixels: needs a dark frame, a known hot-pixel map, or both")
    shape = (dark_frame_adu if dark_frame_adu is not None else known).shape
    hot = np.zeros(shape, dtype=bool) if known is None else np.asarray(known, dtype=bool).copy()
    if dark_frame_adu is not None and np.isfinite(sigma):
        dark = np.asarray(dark_frame_adu, dtype=np.float64)
        median = np.median(dark)
        spread = MAD_TO_SD * np.median(np.abs(dark - median))
        # A perfectly flat dark frame has no spread: nothing is an outlier then
        # except values above it by more than one ADU.
        hot |= dark - median > sigma * max(spread, 1.0 / max(sigma, 1e-12))
    return hot


def neighbour_index(hot_mask, radius=1):
    """For each hot pixel, the flat indices of its non-hot neighbours in a square window.

    Parameters
    ----------
    hot_mask : ndarray of bool (Y, X)
    radius : int
        Window half-width: ``radius=1`` is the 3 x 3 neighbourhood.

    Returns
    -------
    hot_flat : ndarray of int (n_hot,)
        Flat indices of the hot pixels.
    neighbours : ndarray of int (n_hot, k)
        Flat indices of each hot pixel's usable neighbours; ``-1`` pads rows
        with fewer (image border, hot neighbours).
    """
    hot_mask = np.asarray(hot_mask, dtype=bool)
    ny, nx = hot_mask.shape
    hy, hx = np.nonzero(hot_mask)
    offsets = [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1) if (dy, dx) != (0, 0)]
    ys = hy[:, None] + np.array([o[0] for o in offsets])[None, :]
    xs = hx[:, None] + np.array([o[1] for o in offsets])[None, :]
    inside = (ys >= 0) & (ys < ny) & (xs >= 0) & (xs < nx)
    flat = np.where(inside, np.clip(ys, 0, ny - 1) * nx + np.clip(xs, 0, nx - 1), -1)
    usable = inside & ~hot_mask.reshape(-1)[np.clip(flat, 0, None)]
    neighbours = np.where(usable, flat, -1)
    if neighbours.size and (neighbours < 0).all(axis=1).any():
        bad = int(np.flatnonzero((neighbours < 0).all(axis=1))[0])
        raise InputError(f"hot pixel at y={hy[bad]}, x={hx[bad]} has no non-hot neighbour within {radius} pixels; "
                         "use a larger correction.hot_pixel_radius")
    return hy * nx + hx, neighbours


def correct_counts(counts, offset_adu, e_per_adu, hot_flat, neighbours):
    """Photoelectrons from camera counts, with hot pixels replaced.

    Parameters
    ----------
    counts : ndarray of uint16 (Z, Y, X)
        Raw camera counts of one channel.
    offset_adu : ndarray (Y, X) or float
        Per-pixel or scalar camera offset in ADU.
    e_per_adu : float
        Camera gain, photoelectrons per ADU.
    hot_flat, neighbours : ndarray of int
        From :func:`neighbour_index`.

    Returns
    -------
    ndarray of float32 (Z, Y, X)
        ``max(counts - offset, 0) * e_per_adu``; each hot pixel holds the
        median of its usable neighbours in the same plane.
    """
    out = np.array(counts, dtype=np.float32)  # the one full-size copy; the rest is in place
    np.subtract(out, np.asarray(offset_adu, dtype=np.float32), out=out)
    np.maximum(out, 0, out=out)
    out *= np.float32(e_per_adu)
    if len(hot_flat):
        planes = out.reshape(out.shape[0], -1)
        values = planes[:, np.clip(neighbours, 0, None)]  # (Z, n_hot, k)
        values[:, neighbours < 0] = np.nan
        planes[:, hot_flat] = np.nanmedian(values, axis=2)
    return out


def to_uint16(electrons):
    """Round non-negative float32 photoelectrons to uint16, saturating at 65535.

    Works in place on ``electrons``; returns (array, n_saturated).
    """
    np.rint(electrons, out=electrons)
    saturated = int(np.count_nonzero(electrons > 65535))
    np.clip(electrons, 0, 65535, out=electrons)
    return electrons.astype(np.uint16), saturated

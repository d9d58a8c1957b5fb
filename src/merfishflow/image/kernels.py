"""Compiled (numba) kernels: pixel decoding's per-plane filters and pixel traces' magnitudes, and
registration's linear resampling (:func:`warp_linear`).

The difference of Gaussians of :func:`merfishflow.spots.decoding.enhance_bits` is,
per z plane, ``max(0, L - B)`` with ``L`` the plane low-passed in y and x
and ``B`` a wide Gaussian of ``L`` (the local background). Done with numpy
and BLAS, that is five or six passes over a 16 MB plane (y, x, the block
means, the interpolation back, the subtraction), each one memory-bound; here
one compiled kernel (:class:`PlaneDoG`) works row by row, so that a row is
filtered in y and x, summed into its background blocks and later subtracted
while it is in the CPU cache: 12 ms instead of 30 ms per 2048 x 2048 plane
on one core (benchmarks/RESULTS.md, "Pixel decoding"). Likewise
:func:`trace_magnitudes` reads each bit's row once instead of four numpy
passes and a matrix-vector product. numba (rather than a C extension) keeps
the kernels in Python, compiles them for the CPU at hand on first use and
caches the result next to this file.

The kernels do not reorder floating-point operations (no ``fastmath``), so
their results do not depend on threads or slabs; the filters equal
scipy.ndimage's (``mode="reflect"``) up to float32 rounding (scipy
accumulates in float64).

The background is smooth (sigma 5.6 px at the defaults), so it is estimated
on ``f x f`` block means, blurred there with a Gaussian whose sigma makes the
whole chain (block mean, variance ``(f^2 - 1) / 12`` px^2 per axis; Gaussian;
linear interpolation back to the pixels, about ``(f^2 - 1) / 6``) have the
requested variance, and interpolated linearly back: ~1/f^2 of the exact
Gaussian's work (:func:`block_sigma`). A partial last block is averaged over
the pixels it has.

:func:`warp_linear` resamples a volume at ``p + shift + field(p)`` with the
coarse field interpolated on the fly, one output row at a time:
``scipy.ndimage.map_coordinates`` needs the three coordinate arrays written
out first (12 bytes per voxel, plus the field's upsampling; timings in
benchmarks/RESULTS.md).
"""

from __future__ import annotations

import functools
import math

import numba
import numpy as np
from scipy import ndimage as ndi

from .binning import linear_weights

__all__ = ["PlaneDoG", "block_sigma", "gaussian_weights", "trace_magnitudes", "warp_linear"]

_kernel = numba.njit(cache=True, nogil=True)


def gaussian_weights(sigma, truncate):
    """The normalized 1D Gaussian of scipy.ndimage.gaussian_filter1d (radius ``int(truncate sigma + 0.5)``),
    float32; ``sigma = 0``: the identity ``[1]``."""
    if sigma <= 0:
        return np.ones(1, np.float32)
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 * (x / sigma) ** 2)
    return (phi / phi.sum()).astype(np.float32)


def block_sigma(sigma, f):
    """Sigma (in blocks) of the Gaussian on ``f x f`` block means that, with the block mean and the linear
    interpolation back, blurs like a Gaussian of ``sigma`` pixels; None where blocks cannot (``f <= 1``, or
    ``sigma`` at most the block chain's own spread): the exact Gaussian is used there."""
    if f <= 1 or sigma * sigma <= (f * f - 1) / 4:
        return None
    return math.sqrt(sigma * sigma - (f * f - 1) / 4) / f


@numba.njit(cache=True, nogil=True, inline="always")
def _reflect(i, n):
    """scipy.ndimage's ``mode="reflect"`` (d c b a | a b c d | d c b a) for index ``i`` of ``n``."""
    while i < 0 or i >= n:
        i = -i - 1 if i < 0 else 2 * n - i - 1
    return i


@_kernel
def _lowpass_row(src, i, wy, wx, row, out_row):
    """Row ``i`` of ``src`` filtered with ``wy`` along y, then ``wx`` along x, into ``out_row``.

    ``row`` (X + len(wx) - 1) is scratch: the y-filtered row with its reflected x border. One tap at a time
    over the whole row (contiguous, vectorized), the row staying in the L1 cache.
    """
    Y, X = src.shape
    ry = (wy.size - 1) // 2
    rx = (wx.size - 1) // 2
    r = row[rx:rx + X]
    r[:] = 0
    for k in range(wy.size):
        s = src[_reflect(i + k - ry, Y)]
        w = wy[k]
        for j in range(X):
            r[j] += w * s[j]
    for j in range(rx):
        row[rx - 1 - j] = row[rx + _reflect(-1 - j, X)]
        row[rx + X + j] = row[rx + _reflect(X + j, X)]
    out_row[:] = 0
    for k in range(wx.size):
        w = wx[k]
        for j in range(X):
            out_row[j] += w * row[j + k]


@_kernel
def separable_yx(src, dst, wy, wx):
    """``dst`` = ``src`` (2D) filtered with the odd, centred kernels ``wy`` along y and ``wx`` along x
    (``mode="reflect"``); ``dst`` must not overlap ``src``."""
    Y, X = src.shape
    row = np.empty(X + wx.size - 1, np.float32)
    for i in range(Y):
        _lowpass_row(src, i, wy, wx, row, dst[i])


@_kernel
def _block_row_means(colsum, f, X, n_rows, means_row):
    """Means of the ``f``-wide column blocks of ``colsum`` (sums over ``n_rows`` rows)."""
    for b in range(means_row.size):
        j1 = min(X, (b + 1) * f)
        acc = np.float32(0)
        for j in range(b * f, j1):
            acc += colsum[j]
        means_row[b] = acc / np.float32(n_rows * (j1 - b * f))


@_kernel
def _interpolate_x(small, wide, ix0, ix1, wx1):
    """Each row of ``small`` (ny, nx) linearly interpolated along x to ``wide`` (ny, X)."""
    for a in range(small.shape[0]):
        s = small[a]
        d = wide[a]
        for j in range(wide.shape[1]):
            t0 = s[ix0[j]]
            d[j] = t0 + wx1[j] * (s[ix1[j]] - t0)


@_kernel
def dog_plane_blocks(src, lp, out, wy, wx, f, wsmall, means, small, wide, iy0, iy1, wy1, ix0, ix1, wx1, subtract):
    """``out = max(0, L - B)`` (``subtract``) or ``out = B``, with ``L`` = ``src`` low-passed (into ``lp``)
    and ``B`` its block background; ``means``, ``small`` (ny, nx) and ``wide`` (ny, X) are scratch.

    ``out`` may be ``src`` (it is written only once ``src`` has been read), not ``lp``.
    """
    Y, X = src.shape
    row = np.empty(X + wx.size - 1, np.float32)
    colsum = np.zeros(X, np.float32)
    for i in range(Y):
        r = lp[i]
        _lowpass_row(src, i, wy, wx, row, r)
        for j in range(X):
            colsum[j] += r[j]
        if i % f == f - 1 or i == Y - 1:
            _block_row_means(colsum, f, X, i % f + 1, means[i // f])
            colsum[:] = 0
    separable_yx(means, small, wsmall, wsmall)
    _interpolate_x(small, wide, ix0, ix1, wx1)
    for i in range(Y):
        a = wide[iy0[i]]
        b = wide[iy1[i]]
        w = wy1[i]
        lr = lp[i]
        o = out[i]
        for j in range(X):
            bg = a[j] + w * (b[j] - a[j])
            if subtract:
                v = lr[j] - bg
                o[j] = v if v > 0 else np.float32(0)
            else:
                o[j] = bg


@_kernel
def _clip_difference(a, b, out):
    """``out = max(0, a - b)``, 2D."""
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            v = a[i, j] - b[i, j]
            out[i, j] = v if v > 0 else np.float32(0)


@functools.lru_cache(maxsize=16)
def _interpolation(n_full, n_small, f):
    i0, w1 = linear_weights(n_full, n_small, f)
    i1 = np.minimum(i0 + 1, n_small - 1)
    for a in (i0, i1, w1):
        a.setflags(write=False)  # cached: shared by every plane and thread
    return i0, i1, w1


class PlaneDoG:
    """The per-plane difference of Gaussians ``max(0, L - B)`` for planes of one shape.

    Parameters
    ----------
    shape_yx : tuple of 2 int
    sigma_yx : tuple of 2 float
        The low-pass's sigmas in pixels (0: none along that axis).
    background_sigma : float
        The background Gaussian's sigma in pixels (0: no background; the result is ``max(0, L)``).
    downsample : int
        Background block size ``f`` (see :func:`block_sigma`; 1: the exact Gaussian, with scipy.ndimage).
    truncate : float
        Kernels are cut at this many sigmas.

    Holds its scratch buffers (about 1.3 planes), so one instance serves one thread.
    """

    def __init__(self, shape_yx, sigma_yx, background_sigma, downsample, truncate):
        Y, X = (int(v) for v in shape_yx)
        self.shape = (Y, X)
        self.wy, self.wx = (gaussian_weights(float(s), truncate) for s in sigma_yx)
        self.background_sigma = float(background_sigma)
        self.truncate = float(truncate)
        self.f = int(downsample)
        self.lp = np.empty((Y, X), np.float32)
        s_small = block_sigma(self.background_sigma, self.f) if self.background_sigma > 0 else None
        self.blocks = s_small is not None
        if self.blocks:
            ny, nx = -(-Y // self.f), -(-X // self.f)
            self.wsmall = gaussian_weights(s_small, truncate)
            self.means = np.empty((ny, nx), np.float32)
            self.small = np.empty((ny, nx), np.float32)
            self.wide = np.empty((ny, X), np.float32)
            self.interp = (*_interpolation(Y, ny, self.f), *_interpolation(X, nx, self.f))

    def _blocks(self, src, out, wy, wx, subtract):
        dog_plane_blocks(src, self.lp, out, wy, wx, self.f, self.wsmall, self.means, self.small, self.wide,
                         *self.interp, subtract)

    def __call__(self, src, out):
        """``out`` (float32, the plane's shape, may be ``src``) = the enhanced plane of ``src``."""
        if self.blocks:
            self._blocks(src, out, self.wy, self.wx, True)
            return out
        separable_yx(src, self.lp, self.wy, self.wx)
        if self.background_sigma > 0:
            bg = ndi.gaussian_filter(self.lp, self.background_sigma, mode="reflect", truncate=self.truncate)
            _clip_difference(self.lp, bg, out)
        else:
            np.maximum(self.lp, 0, out=out)
        return out

    def background(self, src):
        """The background ``B`` of ``src`` itself (the low-pass skipped): what :meth:`__call__` subtracts from
        the low-passed plane. For checking the block approximation."""
        if not self.blocks:
            return ndi.gaussian_filter(np.asarray(src, np.float32), self.background_sigma, mode="reflect",
                                       truncate=self.truncate)
        one = np.ones(1, np.float32)
        out = np.empty(self.shape, np.float32)
        self._blocks(src, out, one, one, False)
        return out

    def block_means(self, src):
        """The ``f x f`` block means of ``src`` that the block background starts from."""
        self.background(src)
        return self.means.copy()


def trace_magnitudes(enh, background, inv_scale2, out, n_threads=1):
    """``out[z, y, x] = sqrt(sum_b inv_scale2[b] max(0, enh[b, z, y, x] - background[b])^2)``: the L2 norm
    of every voxel's normalized trace.

    Parameters
    ----------
    enh : float32 ndarray (n_bits, nz, Y, X)
        May be a view with gaps between rows (a slab of a larger array, a y/x window).
    background, inv_scale2 : float32 ndarray (n_bits,)
    out : float32 ndarray (nz, Y, X), C-contiguous
    n_threads : int
        Threads, each on its own band of rows (the result does not depend on it).

    Row by row, each row of every bit read once, the bits summed in their order (so the result does not
    depend on slabs).
    """
    if enh.size == 0:
        out[...] = 0
        return out
    if enh.strides[-1] != enh.itemsize or min(enh.strides) < 0:
        enh = np.ascontiguousarray(enh)
    # numba compiles a view with gaps between rows for any stride and does not vectorize it: hand the kernel
    # the memory as one flat (contiguous) array and the row strides, so that each row is a contiguous slice.
    steps = [s // enh.itemsize for s in enh.strides[:3]]
    span = sum((n - 1) * st for n, st in zip(enh.shape, (*steps, 1))) + 1
    flat = np.lib.stride_tricks.as_strided(enh, shape=(span,), strides=(enh.itemsize,), writeable=False)
    Y = out.shape[1]
    bands = [(Y * k // n_threads, Y * (k + 1) // n_threads) for k in range(max(1, min(n_threads, Y)))]

    def run(band):
        _trace_magnitudes(flat, steps[0], steps[1], steps[2], background, inv_scale2, out, *band)

    if len(bands) == 1:
        run(bands[0])
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=len(bands)) as pool:
            list(pool.map(run, bands))
    return out


@_kernel
def _trace_magnitudes(flat, step_b, step_z, step_y, background, inv_scale2, out, i0, i1):
    nz, Y, X = out.shape
    for z in range(nz):
        for i in range(i0, i1):
            o = out[z, i]
            o[:] = 0
            for b in range(background.size):
                start = b * step_b + z * step_z + i * step_y
                e = flat[start:start + X]
                bg = background[b]
                w = inv_scale2[b]
                for j in range(X):
                    v = e[j] - bg
                    v = v if v > 0 else np.float32(0)
                    o[j] += w * (v * v)
            for j in range(X):
                o[j] = np.sqrt(o[j])


# registration: linear resampling -----------------------------------------------------------------
@numba.njit(cache=True, nogil=True, inline="always")
def _corner(c, n):
    """Lower sample index and weight of the upper one for coordinate ``c`` on ``n`` samples, edges
    repeated beyond the outer samples (map_coordinates' ``mode="nearest"``)."""
    c = min(max(c, 0.0), n - 1.0)
    i = min(int(c), n - 1)
    return i, min(i + 1, n - 1), c - i


@_kernel
def warp_linear(image, out, z_start, shift, field, iz0, wz, iy0, wy, ix0, wx):
    """``out[k, y, x]`` = ``image`` at ``(z_start + k, y, x) + shift + field(z_start + k, y, x)``, trilinear,
    edges repeated: ``scipy.ndimage.map_coordinates(image, coords, order=1, mode="nearest")`` up to rounding.

    ``field`` (3, cz, cy, cx) is the coarse displacement (an empty array: none), interpolated to each
    voxel with the per-axis indices ``i*0`` and upper-sample weights ``w*`` of
    :func:`merfishflow.image.binning.linear_weights` (z, then y, then x; cf.
    :func:`merfishflow.image.registration.upsample_field`). Arithmetic in float64; ``out`` float32.
    """
    nz, ny, nx = image.shape
    has_field = field.shape[0] == 3
    ncz, ncy, ncx = field.shape[1], field.shape[2], field.shape[3]
    row = np.zeros((3, max(ncx, 1)), np.float64)
    for k in range(out.shape[0]):
        z = z_start + k
        for y in range(out.shape[1]):
            if has_field:
                a0, b0 = iz0[z], iy0[y]
                a1, b1 = min(a0 + 1, ncz - 1), min(b0 + 1, ncy - 1)
                fz, fy = np.float64(wz[z]), np.float64(wy[y])
                for c in range(3):
                    for i in range(ncx):
                        v00, v01 = np.float64(field[c, a0, b0, i]), np.float64(field[c, a0, b1, i])
                        v10, v11 = np.float64(field[c, a1, b0, i]), np.float64(field[c, a1, b1, i])
                        t0 = v00 + fz * (v10 - v00)
                        t1 = v01 + fz * (v11 - v01)
                        row[c, i] = t0 + fy * (t1 - t0)
            for x in range(out.shape[2]):
                dz, dy, dx = shift[0], shift[1], shift[2]
                if has_field:
                    i0 = ix0[x]
                    i1 = min(i0 + 1, ncx - 1)
                    fx = np.float64(wx[x])
                    dz += row[0, i0] + fx * (row[0, i1] - row[0, i0])
                    dy += row[1, i0] + fx * (row[1, i1] - row[1, i0])
                    dx += row[2, i0] + fx * (row[2, i1] - row[2, i0])
                z0, z1, tz = _corner(z + dz, nz)
                y0, y1, ty = _corner(y + dy, ny)
                x0, x1, tx = _corner(x + dx, nx)
                value = ((1.0 - tz) * ((1.0 - ty) * ((1.0 - tx) * image[z0, y0, x0] + tx * image[z0, y0, x1])
                                       + ty * ((1.0 - tx) * image[z0, y1, x0] + tx * image[z0, y1, x1]))
                         + tz * ((1.0 - ty) * ((1.0 - tx) * image[z1, y0, x0] + tx * image[z1, y0, x1])
                                 + ty * ((1.0 - tx) * image[z1, y1, x0] + tx * image[z1, y1, x1])))
                out[k, y, x] = value

"""Spot enhancement of every bit (step 1 of :mod:`merfishflow.spots.decoding`): a difference of Gaussians.

A 3D Gaussian low-pass minus a 2D per-plane Gaussian background (computed on
block means and interpolated back), clipped at 0, in photoelectrons. The z
pass is a banded-matrix product (BLAS); the y/x passes, block means,
interpolation and subtraction run in one numba kernel
(:class:`merfishflow.image.kernels.PlaneDoG`). Bits are filtered in threads,
each into its own buffers, so the result does not depend on the thread count.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage as ndi

from ..cpus import available_cpus, blas_threads
from ..image.kernels import PlaneDoG, gaussian_weights

if TYPE_CHECKING:
    from .decoding import DecodingParams


def _sigmas_px(params: DecodingParams, voxel_size_zyx_um):
    lp = tuple(s / v for s, v in zip(params.lowpass_sigma_zyx_um, voxel_size_zyx_um))
    bg = params.background_sigma_yx_um / voxel_size_zyx_um[1]
    halo = int(math.ceil(params.truncate * lp[0])) if lp[0] > 0 else 0
    return {"lowpass_zyx": [float(v) for v in lp], "background_yx": float(bg), "halo_z": halo,
            "background_downsample": int(params.background_downsample)}


def _n_threads(params: DecodingParams, n_bits: int) -> int:
    if params.n_threads > 0:
        return min(params.n_threads, n_bits)
    return max(1, min(available_cpus(), n_bits))


@functools.lru_cache(maxsize=16)
def _band_operator(n, sigma, truncate):
    """The (n, n) float32 matrix ``M`` with ``M @ v = gaussian_filter1d(v, sigma, axis=0, mode="reflect")``.

    Built by filtering the identity with scipy.ndimage itself (float64), so the reflected border weights are
    scipy's. Banded: row ``i`` is zero outside ``i - r .. i + r`` (``r`` the kernel radius), also at the
    borders (reflection stays within ``r`` of the edge).
    """
    w = gaussian_weights(sigma, truncate).astype(np.float64)
    op = ndi.correlate1d(np.eye(n), w, axis=0, mode="reflect").astype(np.float32)
    op.setflags(write=False)  # cached (lru_cache): shared by every slab and thread
    return op


def _apply_axis0(op, radius, src, dst, rows=None, block=16):
    """``dst = op[rows] @ src`` along axis 0 (the Gaussian of :func:`_band_operator`), as BLAS sgemm.

    scipy.ndimage filters a non-last axis line by line through a gathered buffer, which is slow when the
    lines are long-strided (y in a plane, z in a volume), and numpy multiply-adds of whole shifted
    sub-arrays take ~10 passes over the data for 7 taps. Here each ``block`` of output rows is one matrix
    product with the ``block + 2 radius`` input rows it depends on (sgemm, near the memory bandwidth).
    ``rows``: the output rows ``(a, b)`` of ``src`` to compute (default all), written to ``dst[0:b - a]``.
    Equal to scipy's result up to float32 rounding (scipy accumulates in float64).
    """
    n = src.shape[0]
    a, b = rows if rows is not None else (0, n)
    s2 = src.reshape(n, -1)
    d2 = dst.reshape(dst.shape[0], -1)
    for r0 in range(a, b, block):
        r1 = min(b, r0 + block)
        if r1 - r0 == 1 and n >= 2:
            # A one-row product goes to OpenBLAS's gemv, whose rounding differs from gemm's: compute two rows
            # so that a row's value does not depend on where the slab (or block) ends.
            e0 = r0 - 1 if r0 >= 1 else r0
            c0, c1 = max(0, e0 - radius), min(n, e0 + 2 + radius)
            pair = np.matmul(op[e0:e0 + 2, c0:c1], s2[c0:c1])
            d2[r0 - a] = pair[r0 - e0]
            continue
        c0, c1 = max(0, r0 - radius), min(n, r1 + radius)
        np.matmul(op[r0:r1, c0:c1], s2[c0:c1], out=d2[r0 - a:r1 - a])


def _enhance_one(vol, z_core, sigmas, truncate, buffers, ops):
    """Filter one bit's slab ``vol`` (nz, Y, X); the result is left in ``vol[a:b]``.

    The z pass (sgemm with the banded operator ``ops["z"]``, :func:`_apply_axis0`) computes the core planes
    into a per-worker buffer; the per-plane passes (y, x, background, subtraction) then run plane by plane
    in one compiled kernel (:class:`merfishflow.image.kernels.PlaneDoG`) from that buffer into ``vol``.
    ``buffers`` (a list, filled on first use) is reused from bit to bit: fresh large arrays cost page faults.
    """
    a, b = z_core
    sz, sy, sx = sigmas["lowpass_zyx"]
    core_shape = (b - a, *vol.shape[1:])
    if not buffers or buffers[0].shape != core_shape:
        buffers[:] = [np.empty(core_shape, np.float32),
                      PlaneDoG(vol.shape[1:], (sy, sx), sigmas["background_yx"],
                               sigmas.get("background_downsample", 1), truncate)]
    spare, dog = buffers
    if sz > 0 and vol.shape[0] > 1:
        # Only the core planes: the halo is input only.
        _apply_axis0(ops["z"], ops["rz"], vol, spare, rows=(a, b))
        src = spare
    else:
        src = vol[a:b]
    for i in range(b - a):
        dog(src[i], vol[a + i])


def enhance_bits(stack, z_core, sigmas: dict, truncate: float, n_threads: int = 1):
    """DoG spot enhancement of a slab, in place.

    Parameters
    ----------
    stack : float32 ndarray (n_bits, nz, Y, X)
        The slab with its z halo; overwritten.
    z_core : tuple (a, b)
        Planes ``a:b`` of ``stack`` to return (the rest is halo).
    sigmas : dict
        From the decoder (``lowpass_zyx``, ``background_yx`` in voxels, ``background_downsample``).
    truncate : float
    n_threads : int
        Bits filtered in parallel (the compiled kernels and BLAS release the GIL); each bit is filtered by
        itself, so the result does not depend on it.

    Returns
    -------
    float32 ndarray (n_bits, b - a, Y, X)
        A view of ``stack``: ``max(0, G_lp * I - G_bg2D * (G_lp * I))``.
    """
    n = stack.shape[0]
    workers = max(1, min(n_threads, n))
    sz, sy, sx = sigmas["lowpass_zyx"]
    ops = {}
    if sz > 0 and stack.shape[1] > 1:
        ops["z"] = _band_operator(stack.shape[1], float(sz), float(truncate))
        ops["rz"] = int(truncate * float(sz) + 0.5)
    # Bit k goes to worker k % workers, which reuses its own buffers.
    def run(w):
        buffers = []
        for k in range(w, n, workers):
            _enhance_one(stack[k], z_core, sigmas, truncate, buffers, ops)

    if workers > 1:
        from concurrent.futures import ThreadPoolExecutor

        # One BLAS thread per filter thread: the z pass's band matrix products are small, and OpenBLAS's own
        # threads on top of ours oversubscribe the cores (2 filter threads on 2 cores: 1.5 s with 2 BLAS threads,
        # 1.05 s with 1). threadpoolctl comes with scikit-learn; the limit is process-wide while the pool runs.
        with blas_threads(1), ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(run, range(workers)))
    else:
        run(0)
    a, b = z_core
    return stack[:, a:b]

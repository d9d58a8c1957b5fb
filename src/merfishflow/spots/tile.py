"""Decoding one tile, step by step (:func:`merfishflow.spots.decoding.decode_tile` and its "Algorithm").

The refinement crop is enhanced and the per-bit normalization fitted on it,
then the whole tile is decoded with that normalization, read whole when it
is small enough and slab by slab otherwise; decoded voxels are grouped into
spots once all slabs are done.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import InputError
from ..image.kernels import block_sigma
from .decoding import DecodeResult
from .enhancement import _n_threads, _sigmas_px, enhance_bits
from .grouping import _spots_from_voxels, _table
from .normalization import _initial_normalization, _refine
from .voxels import _VoxelCollector


def _decode_source(get_slab, n_planes, shape_yx, codewords, scale, background, params, progress):
    collector = _VoxelCollector(codewords, scale, background, params, shape_yx)
    for z0 in range(0, n_planes, params.slab_planes):
        z1 = min(z0 + params.slab_planes, n_planes)
        collector.add(get_slab(z0, z1), z0, last=z1 >= n_planes)
        if progress is not None:
            progress(f"decoded planes {z0}-{z1 - 1} of {n_planes}")
    shape = (n_planes, *shape_yx)
    stats, codes, peaks = _spots_from_voxels(collector.voxels(), shape, codewords.shape[1], params)
    return _table(stats, codes, peaks, codewords.shape[1], params, shape)


def _filter_halo_yx(sig, truncate):
    """Pixels of y/x context the enhancement needs so that a window's inner values equal the whole tile's:
    the low-pass's radius plus the background's (its block-mean Gaussian and the interpolation back), a
    multiple of the background's block size so that the window's blocks are the tile's."""
    f = max(1, int(sig["background_downsample"]))
    r_lp = max(int(truncate * s + 0.5) for s in sig["lowpass_zyx"][1:])
    sbg = sig["background_yx"]
    if sbg <= 0:
        r_bg = 0
    elif block_sigma(sbg, f) is None:
        r_bg = int(truncate * sbg + 0.5)
    else:
        r_bg = f * (int(truncate * block_sigma(sbg, f) + 0.5) + 2)
    return -(-(r_lp + r_bg) // f) * f


def _refinement_window(shape, max_voxels, sig, truncate):
    """The refinement crop ``(y0, y1, x0, x1)``: every plane, a central y/x window of at most ``max_voxels``
    voxels starting on a background block; and the window to read for it (with :func:`_filter_halo_yx`)."""
    Z, Y, X = shape
    side = max(1, int(math.isqrt(max(1, max_voxels // Z))))
    cy, cx = min(Y, side), min(X, side)
    if cy == Y and cx < X:
        cx = min(X, max(1, max_voxels // (Z * Y)))
    if cx == X and cy < Y:
        cy = min(Y, max(1, max_voxels // (Z * X)))
    f = max(1, int(sig["background_downsample"]))
    # A whole number of background blocks, so that the window's blocks are the tile's.
    cy, cx = (c if c == n else min(n, max(f, c // f * f)) for c, n in ((cy, Y), (cx, X)))
    y0 = (Y - cy) // 2 // f * f if cy < Y else 0
    x0 = (X - cx) // 2 // f * f if cx < X else 0
    h = _filter_halo_yx(sig, truncate)
    crop = (y0, y0 + cy, x0, x0 + cx)
    return crop, (max(0, y0 - h), min(Y, y0 + cy + h), max(0, x0 - h), min(X, x0 + cx + h))


# entry point -----------------------------------------------------------------------------------


def _checked_inputs(codewords, shape_zyx, voxel_size_zyx_um):
    """``(codewords as uint8, shape, voxel size)``, each checked, or InputError naming the argument."""
    codewords = np.asarray(codewords)
    if codewords.ndim != 2 or codewords.shape[0] < 1 or codewords.shape[1] < 1:
        raise InputError(f"codewords: expected a 2D (n_codewords, n_bits) 0/1 array, got shape {codewords.shape}")
    if not np.isin(codewords, (0, 1)).all():
        raise InputError("codewords: expected only 0 and 1")
    codewords = codewords.astype(np.uint8)
    if (codewords.sum(axis=1) == 0).any():
        raise InputError(f"codewords: rows {np.flatnonzero(codewords.sum(axis=1) == 0).tolist()} have no bit on")
    shape = tuple(int(v) for v in shape_zyx)
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(f"shape_zyx: expected three positive integers, got {shape_zyx!r}")
    voxel = tuple(float(v) for v in voxel_size_zyx_um)
    if len(voxel) != 3 or not all(v > 0 for v in voxel):
        raise InputError(f"voxel_size_zyx_um: expected three positive floats, got {voxel_size_zyx_um!r}")
    return codewords, shape, voxel


def _fit_normalization(cache, codewords, params, progress):
    """Initial per-bit normalization of the refinement crop ``cache`` (n_bits, Z, cy, cx), refined by decoding
    it until no scale moves by more than ``convergence_tol``: ``(scale, background, history, converged)``."""
    n_bits, Z, cy, cx = cache.shape

    def from_cache(z0, z1):
        return cache[:, z0:z1]

    scale, background = _initial_normalization(cache, params.init_snr)
    history = []
    converged = False
    previous_proposal, fraction = math.inf, 1.0
    for it in range(params.n_iterations):
        spots, peaks, _ = _decode_source(from_cache, Z, (cy, cx), codewords, scale, background, params, None)
        new_scale, new_bg = _refine(spots["barcode_id"].to_numpy(), peaks[:, :n_bits], codewords, scale, background,
                                    params.min_spots_per_bit)
        proposal = float(np.max(np.abs(new_scale / scale - 1)))
        if proposal >= previous_proposal:
            # No progress: the decoded set flips between states (a 2-cycle on small crops). Halve the step,
            # for good: a full step taken again after a half one jumped straight back over the fixed point
            # between the states (benchmarks/RESULTS.md, the Wiener–Butterworth back projector).
            fraction /= 2
        previous_proposal = proposal
        if fraction < 1:        # geometric interpolation of the scales, linear of the backgrounds
            new_scale = scale * (new_scale / scale) ** fraction
            new_bg = background + fraction * (new_bg - background)
        change = float(np.max(np.abs(new_scale / scale - 1)))
        history.append({"iteration": it, "scale": scale.tolist(), "background": background.tolist(),
                        "n_spots": int(len(spots)), "max_rel_change": change})
        if progress is not None:
            progress(f"normalization iteration {it}: {len(spots)} spots, max relative scale change {change:.4f}")
        scale, background = new_scale, new_bg
        if change <= params.convergence_tol:
            converged = True
            break
    history.append({"iteration": len(history), "scale": scale.tolist(), "background": background.tolist(),
                    "n_spots": None, "max_rel_change": None})
    return scale, background, history, converged


def _decode_tile(read_bits, shape_zyx, codewords, voxel_size_zyx_um, params, progress):
    codewords, shape, voxel = _checked_inputs(codewords, shape_zyx, voxel_size_zyx_um)
    n_bits = codewords.shape[1]
    Z, Y, X = shape
    sig = _sigmas_px(params, voxel)
    halo = sig["halo_z"]
    threads = _n_threads(params, n_bits)

    # One buffer that every read fills: a fresh slab (3.8 GB for 14 planes of 2048^2 x 16 bits) costs a page
    # fault per 4 kB of it.
    slab_buffer = []

    def read_enhanced(z0, z1, window=None):
        """Planes z0:z1 enhanced (read with the z halo); ``window`` (y0, y1, x0, x1): only that y/x window."""
        a, b = max(0, z0 - halo), min(Z, z1 + halo)
        if window == (0, Y, 0, X):
            window = None
        wy, wx = (Y, X) if window is None else (window[1] - window[0], window[3] - window[2])
        size = n_bits * (b - a) * wy * wx
        if not slab_buffer or slab_buffer[0].size < size:
            slab_buffer[:] = []
            slab_buffer.append(np.empty(size, np.float32))
        out = slab_buffer[0][:size].reshape(n_bits, b - a, wy, wx)
        stack = np.asarray(read_bits(a, b, window, out=out))
        if stack.shape != (n_bits, b - a, wy, wx):
            raise InputError(
                f"read_bits({a}, {b}{'' if window is None else f', {window}'}) returned shape {stack.shape}; "
                f"expected {(n_bits, b - a, wy, wx)} (the codebook has {n_bits} bits, the tile is {shape})")
        if stack.dtype != np.float32 or not stack.flags.writeable or not stack.flags.c_contiguous:
            stack = np.array(stack, dtype=np.float32, order="C")
        return enhance_bits(stack, (z0 - a, z1 - a), sig, params.truncate, threads)

    (y0, y1, x0, x1), window = _refinement_window(shape, params.refine_max_voxels, sig, params.truncate)
    cy, cx = y1 - y0, x1 - x0
    whole = Z * Y * X <= params.whole_tile_max_voxels
    if whole:
        # The tile is read once and filtered in place (no halo, no slab copies), and the refinement crop is
        # cut from it. Equal to the slabs: a slab's halo gives each of its planes the same z neighbourhood
        # as the whole volume.
        tile_cache = read_enhanced(0, Z)
        if progress is not None:
            progress(f"enhanced planes 0-{Z - 1} of {Z}")
        cache = tile_cache[:, :, y0:y1, x0:x1]  # a view: decoded in row blocks (_VoxelCollector), not copied
    else:
        # Only the crop (with the filters' y/x halo) is read and filtered for the refinement; the final decode
        # reads the whole tile again, slab by slab.
        cache = np.empty((n_bits, Z, cy, cx), np.float32)
        wy0, wx0 = window[0], window[2]
        for z0 in range(0, Z, params.slab_planes):
            z1 = min(z0 + params.slab_planes, Z)
            enh = read_enhanced(z0, z1, window)
            cache[:, z0:z1] = enh[:, :, y0 - wy0:y1 - wy0, x0 - wx0:x1 - wx0]
            del enh
            if progress is not None:
                progress(f"enhanced planes {z0}-{z1 - 1} of {Z} (refinement crop)")

    scale, background, history, converged = _fit_normalization(cache, codewords, params, progress)
    del cache
    if whole:
        spots, _, n_rejected = _decode_source(lambda z0, z1: tile_cache[:, z0:z1], Z, (Y, X), codewords, scale,
                                              background, params, progress)
    else:
        spots, _, n_rejected = _decode_source(read_enhanced, Z, (Y, X), codewords, scale, background, params,
                                           progress)
    return DecodeResult(spots=spots, scale=np.asarray(scale, np.float64), background=np.asarray(background, np.float64),
                        distance_threshold=float(params.distance_threshold),
                        magnitude_threshold=float(params.magnitude_threshold), history=history,
                        converged=converged, n_rejected_area=n_rejected, sigma_px=sig)

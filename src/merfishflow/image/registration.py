"""Round-to-round registration of the fiducial (polyDT) channel: rigid shift plus optical flow.

Pure functions in the style of scikit-image: numpy arrays in and out, no
files, no Snakemake. All arrays are 3D, axes (z, y, x), positions in pixels
(voxels) with pixel centres at integer coordinates.

Displacement convention
-----------------------
Every displacement this module returns or accepts has the *same sense as the
simulator's ground truth* (``docs/simulator.md``): a point at position ``p``
of the reference (round-0) image appears in the moving (round-r) image at

    q = p + shift_zyx_px + field(p)

so that the moving image resampled onto the reference grid is
``out[p] = moving[p + shift_zyx_px + field(p)]`` (:func:`apply_transform`).

* :func:`rigid_shift` returns ``shift_zyx_px``, an estimate of
  ``transforms.json["rounds"][r]["shift_zyx_px"]`` (plus the mean of the
  deformation). It is the **negative** of what
  ``skimage.registration.phase_cross_correlation(reference, moving)``
  returns (skimage reports the shift to *apply to* ``moving``, e.g. with
  ``scipy.ndimage.shift``, to register it onto ``reference``).
* :func:`optical_flow_field` returns the non-rigid remainder ``field``, an
  estimate of ``deformation_r(p)`` minus whatever part of it the rigid shift
  absorbed, sampled on a grid ``downsample`` times coarser than the
  reference, in **full-resolution pixels**. Coarse sample ``j`` (per axis)
  sits at full-resolution position ``downsample * j + (downsample - 1) / 2``:
  the centre of the block of voxels it averages.
* :func:`upsample_field` interpolates it (linearly, clamped beyond the
  outermost sample centres) to every voxel; :func:`total_displacement` adds
  the shift.

Memory: :func:`apply_transform` and :func:`total_displacement` work in
z-slabs, so a (100, 2048, 2048) volume never needs full-size float64
coordinate arrays. :func:`rigid_shift` needs about five complex64 copies of the
volume for its FFTs (see its Notes): ~17 GB for (100, 2048, 2048); register a
central crop or a block-averaged copy of such volumes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft
from scipy import ndimage as ndi

from .binning import binned_shape, block_mean, linear_weights
from ..errors import InputError

__all__ = [
    "PhaseCorrelator",
    "RoundRegistration",
    "apply_transform",
    "normalized_cross_correlation",
    "optical_flow_field",
    "register_round",
    "rigid_shift",
    "round_correlator",
    "total_displacement",
    "upsample_field",
]

# An image whose standard deviation is at most this fraction of its mean
# magnitude (or exactly 0) has no structure to register.
BLANK_RTOL = 1e-4
# Voxels per z-slab in apply_transform / total_displacement (~4 M: 48 MB of
# float32 coordinates per slab).
SLAB_VOXELS = 2**22
# Coarse grid of the optical flow: 3x3 laterally, every z plane (about isotropic voxels at
# 0.31 um z steps and 0.108 um pixels); see optical_flow_field.
DEFAULT_DOWNSAMPLE = (1, 3, 3)


# validation ------------------------------------------------------------------------------------
def as_volume(image, name):
    """``image`` as a non-empty 3D real numeric array; InputError naming ``name`` otherwise."""
    image = np.asarray(image)
    if image.ndim != 3:
        raise InputError(f"{name}: expected a 3D (z, y, x) image, got shape {image.shape}")
    if image.dtype.kind not in "uif":
        raise InputError(f"{name}: expected a real numeric image, got dtype {image.dtype}")
    if min(image.shape) < 1:
        raise InputError(f"{name}: empty image of shape {image.shape}")
    return image


def _check_same_shape(reference_shape, moving_shape, caller):
    if tuple(reference_shape) != tuple(moving_shape):
        raise InputError(f"{caller}: reference and moving images must have the same shape, got "
                         f"{tuple(reference_shape)} and {tuple(moving_shape)}")


def _check_pair(reference, moving, caller):
    reference = as_volume(reference, f"{caller}: reference")
    moving = as_volume(moving, f"{caller}: moving")
    _check_same_shape(reference.shape, moving.shape, caller)
    return reference, moving


def _check_not_blank(image, name):
    """Raise InputError if ``image`` is non-finite or constant up to BLANK_RTOL."""
    if image.dtype.kind == "f" and not np.all(np.isfinite(image)):
        raise InputError(f"{name}: image contains NaN or infinite values")
    # A strided sample (<= 4 Mi voxels) keeps the float64 statistics cheap on large volumes.
    sample = np.asarray(image.reshape(-1)[:: max(1, image.size // 2**22)], dtype=np.float64)
    mean = float(np.mean(sample))
    sd = float(np.std(sample))
    if image.max() == image.min() or sd <= BLANK_RTOL * abs(mean):
        raise InputError(
            f"{name}: the image is blank (constant or nearly so: mean {mean:.6g}, standard deviation "
            f"{sd:.3g}); there is no fiducial structure to register. Check that the fiducial (polyDT) "
            "channel of this round was acquired and read correctly"
        )


def _factors(downsample):
    f = np.broadcast_to(np.asarray(downsample), (3,))
    if not np.all(np.equal(np.mod(f, 1), 0)) or np.any(f < 1):
        raise InputError(f"downsample must be a positive integer or 3 positive integers, got {downsample!r}")
    return tuple(int(v) for v in f)


def _check_shift(shift_zyx_px):
    shift = np.asarray(shift_zyx_px, dtype=np.float64).reshape(-1)
    if shift.shape != (3,) or not np.all(np.isfinite(shift)):
        raise InputError(f"shift_zyx_px must be 3 finite numbers (z, y, x), got {shift_zyx_px!r}")
    return shift


def _check_field(field, full_shape, factors):
    field = np.asarray(field)
    expected = (3,) + binned_shape(full_shape, factors)
    if field.shape != expected:
        raise InputError(f"field: expected shape {expected} (3 components on the grid {factors} times coarser "
                         f"than the image {tuple(full_shape)}), got {field.shape}")
    return field


# rigid -----------------------------------------------------------------------------------------
def _tukey(n, alpha):
    from scipy.signal.windows import tukey

    return tukey(n, alpha).astype(np.float32) if n > 2 else np.ones(n, np.float32)


def _prepare_for_correlation(image, window_alpha):
    """float32 copy, median subtracted, multiplied by a separable Tukey window, mean removed, unit RMS.

    The unit RMS keeps phase_cross_correlation's float32 spectral energies (sums of |F|^2 over the
    volume) finite: photoelectron counts of a large stack overflow them (a RuntimeWarning and an
    infinite error estimate); the phase normalisation makes the shift itself independent of scale.
    """
    out = np.array(image, dtype=np.float32)
    out -= np.float32(np.median(out))
    window_yx = np.outer(_tukey(out.shape[1], window_alpha), _tukey(out.shape[2], window_alpha))
    for plane, weight in zip(out, _tukey(out.shape[0], window_alpha)):   # one pass, no full-size temporary
        plane *= window_yx * weight
    out -= np.float32(out.mean(dtype=np.float64))
    flat = out.reshape(len(out), -1)
    rms = math.sqrt(sum(float(np.dot(row, row)) for row in flat) / out.size)
    if rms > 0:
        out *= np.float32(1.0 / rms)
    return out


class PhaseCorrelator:
    """Sub-pixel rigid shifts of any number of moving images against one reference, by phase correlation.

    The algorithm of ``skimage.registration.phase_cross_correlation`` (whitened
    cross-power spectrum, integer peak, then an upsampled DFT of a 1.5-pixel
    neighbourhood; Guizar-Sicairos et al. 2008, Opt. Lett. 33:156), with the
    same results, computed with real FFTs and with the reference's spectrum
    kept: registering the rounds of a tile onto round 0 then costs one forward
    and one inverse half-size transform per round instead of two forward and
    one inverse full complex transforms plus two unused error estimates
    (benchmarks/RESULTS.md, "the Wiener–Butterworth back projector").

    Parameters
    ----------
    reference : ndarray, shape (Z, Y, X)
        Any real dtype; prepared as in :func:`rigid_shift`'s Notes.
    upsample_factor : int, optional
        Sub-pixel precision is ``1 / upsample_factor`` pixel.
    window_alpha : float, optional
        See :func:`rigid_shift`.
    project_z : bool, optional
        Correlate the images' sums over z (a single plane or thin stack, see
        :func:`rigid_shift_yx`); the z shift is then 0.
    crop_yx : int, optional
        Correlate only the central ``crop_yx`` squared block (all z) of every
        image (:func:`central_crop`).
    normalization : {"phase", None}, optional
        See :func:`rigid_shift`.
    """

    def __init__(self, reference, *, upsample_factor=20, window_alpha=0.3, project_z=False, crop_yx=None,
                 normalization="phase"):
        if normalization not in ("phase", None):
            raise InputError(f"normalization must be 'phase' or None, got {normalization!r}")
        reference = as_volume(reference, "rigid_shift: reference")
        self.shape = reference.shape
        self.crop = central_crop(reference.shape, crop_yx)
        _check_not_blank(reference[self.crop], "rigid_shift: reference")
        self.upsample_factor = int(upsample_factor)
        self.window_alpha = window_alpha
        self.project_z = project_z
        self.normalization = normalization
        self._spectrum = sfft.rfftn(self._prepare(reference[self.crop]))

    def _prepare(self, image):
        if self.project_z:
            image = np.asarray(image, dtype=np.float32).sum(axis=0, keepdims=True)
        return _prepare_for_correlation(image, self.window_alpha)

    def shift(self, moving):
        """``shift_zyx_px`` of ``moving`` (its content moved by it from the reference; see :func:`rigid_shift`)."""
        moving = as_volume(moving, "rigid_shift: moving")
        _check_same_shape(self.shape, moving.shape, "rigid_shift")
        moving = moving[self.crop]
        _check_not_blank(moving, "rigid_shift: moving")
        prepared = self._prepare(moving)
        shape = prepared.shape
        product = sfft.rfftn(prepared)
        np.conjugate(product, out=product)
        product *= self._spectrum                                   # F(reference) * conj(F(moving))
        if self.normalization == "phase":
            eps = np.float32(100 * np.finfo(np.float32).eps)
            product /= np.maximum(np.abs(product), eps)
        correlation = sfft.irfftn(product, s=shape)
        peak = np.array(np.unravel_index(np.argmax(np.abs(correlation)), shape), dtype=np.float64)
        del correlation
        size = np.array(shape)
        peak[peak > np.trunc(size / 2)] -= size[peak > np.trunc(size / 2)]
        if self.upsample_factor > 1:
            up = self.upsample_factor
            peak = np.round(peak * up) / up
            region = int(np.ceil(up * 1.5))
            centre = np.trunc(region / 2.0)
            upsampled = _upsampled_correlation(product, shape, region, up, centre - peak * up)
            fine = np.array(np.unravel_index(np.argmax(np.abs(upsampled)), upsampled.shape), dtype=np.float64)
            peak += (fine - centre) / up
        peak[size == 1] = 0
        if self.project_z:
            peak[0] = 0
        return -peak + 0.0  # + 0.0 turns -0.0 into 0.0


def _upsampled_correlation(half_spectrum, shape, region, upsample_factor, offsets):
    """skimage's ``_upsampled_dft`` of the whole cross-power spectrum, from its half (:func:`scipy.fft.rfftn`).

    The cross-correlation at ``(arange(region) - offsets[a]) / upsample_factor`` pixels in each axis ``a``:
    ``sum over k of P(k) exp(2 pi i sum_a f_a(k) u_a)`` with numpy's ``fftfreq`` frequencies, as skimage
    computes it. The columns missing from the half spectrum, ``P(kz, ky, -m) = conj(P(-kz, -ky, m))`` for
    ``0 < m < nx / 2``, add ``conj`` of the same sum over ``m`` with the frequencies negated, where an even
    axis' Nyquist frequency stays -1/2 (numpy's ``fftfreq`` has no +1/2).
    """
    n_x = shape[-1]
    columns = np.arange(half_spectrum.shape[-1])
    twins = (columns > 0) & (columns < n_x - n_x // 2)        # columns with a conjugate twin outside the half

    def dft(data, frequencies):
        for axis in reversed(range(len(shape))):
            positions = (np.arange(region) - offsets[axis]) / upsample_factor
            kernel = np.exp(2j * np.pi * positions[:, None] * frequencies[axis][None, :]).astype(np.complex64)
            data = np.tensordot(kernel, data, axes=(1, -1))
        return data

    def nyquist_positive(n):
        frequencies = np.fft.fftfreq(n)
        if n % 2 == 0:
            frequencies[n // 2] = 0.5
        return frequencies

    half = dft(half_spectrum, [np.fft.fftfreq(n) for n in shape[:-1]] + [np.fft.fftfreq(n_x)[columns]])
    twin = dft(half_spectrum[..., twins], [nyquist_positive(n) for n in shape[:-1]] + [columns[twins] / n_x])
    return half + np.conj(twin)


def rigid_shift(reference, moving, *, upsample_factor=20, window_alpha=0.3, normalization="phase"):
    """Sub-pixel rigid shift between two 3D images, in the simulator's convention.

    Parameters
    ----------
    reference : ndarray, shape (Z, Y, X)
        Reference image (round 0's fiducial), any real dtype.
    moving : ndarray, shape (Z, Y, X)
        Image of the same field in another round.
    upsample_factor : int, optional
        Sub-pixel precision is ``1 / upsample_factor`` pixel.
    window_alpha : float, optional
        Fraction of each axis tapered by a Tukey window before the FFT (0: no
        window). The taper keeps content that enters or leaves the field of
        view from biasing the estimate toward zero.
    normalization : {"phase", None}, optional
        ``"phase"`` (whitened spectrum) was more accurate than plain
        cross-correlation (``None``) on simulated polyDT stacks (benchmarks/RESULTS.md).

    Returns
    -------
    shift_zyx_px : ndarray of float64, shape (3,)
        Displacement ``d`` such that a point at ``p`` in ``reference`` appears
        at ``p + d`` in ``moving`` (content moved by ``+d``; ``moving`` is
        approximately ``scipy.ndimage.shift(reference, d)``). This is the
        simulator's ``shift_zyx_px`` and the **negative** of
        ``skimage.registration.phase_cross_correlation(reference, moving)[0]``.
        Register ``moving`` with ``apply_transform(moving, d)``.

    Raises
    ------
    InputError
        If the images are not 3D, differ in shape, contain NaN/inf, or either
        is blank (constant or nearly so).

    Notes
    -----
    Preprocessing: each image is converted to float32, its median (the
    background) subtracted, multiplied by the Tukey window and its mean
    removed. The FFTs run in single precision (:class:`PhaseCorrelator`, which
    also registers many images against one reference); peak memory is about
    three complex64 half spectra of the volume plus a float32 copy.
    """
    reference, moving = _check_pair(reference, moving, "rigid_shift")
    correlator = PhaseCorrelator(reference, upsample_factor=upsample_factor, window_alpha=window_alpha,
                                 normalization=normalization)
    return correlator.shift(moving)


# optical flow ----------------------------------------------------------------------------------
def _normalise(image, low=1.0, high=99.5):
    """Map the ``low`` and ``high`` percentiles to 0 and 1 (brightness constancy across rounds)."""
    lo, hi = np.percentile(image, [low, high])
    scale = hi - lo if hi > lo else 1.0
    return ((image - np.float32(lo)) / np.float32(scale)).astype(np.float32, copy=False)


def optical_flow_field(reference, moving, *, shift_zyx_px=None, downsample=DEFAULT_DOWNSAMPLE, method="ilk",
                       radius=2, num_warp=3, smooth_sigma=3.0, attachment=15.0, tightness=0.3, num_iter=10):
    """Smooth non-rigid displacement field on a coarse grid, after rigid pre-alignment.

    Both images are averaged over blocks of ``downsample`` voxels (like
    ``skimage.transform.downscale_local_mean``, but the last partial blocks
    are padded with edge values instead of zeros), intensity-normalised (1st
    and 99.5th percentiles to 0 and 1, so a global brightness change between
    rounds does not matter), the coarse moving image is shifted by
    ``-shift_zyx_px / downsample`` (cubic spline; this is the coarse image of
    ``apply_transform(moving, shift_zyx_px)``), the remaining motion is
    estimated with ``skimage.registration.optical_flow_ilk`` (or
    ``optical_flow_tvl1``) and smoothed with a Gaussian of ``smooth_sigma``
    coarse voxels (the deformation between rounds is smooth over microns;
    the smoothing removes most of the estimator's noise).

    Parameters
    ----------
    reference, moving : ndarray, shape (Z, Y, X)
        Fiducial images of round 0 and round r.
    shift_zyx_px : sequence of 3 float, optional
        Rigid displacement from :func:`rigid_shift` (computed if omitted).
    downsample : int or sequence of 3 int, optional
        Block size of the coarse grid, per axis (z, y, x) if a sequence.
        The default ``(1, 3, 3)`` keeps every z plane: with the usual
        0.31 um z step and 0.108 um pixels the coarse voxels are then about
        isotropic (0.31 x 0.32 x 0.32 um). ``3`` (3 x 3 x 3 blocks) is ~3x
        faster but, on the simulator's stacks, left 0.44 instead of 0.27 px
        RMS residual (0.7 px deformation) and 0.62 instead of 0.44 (1.5 px).
    method : {"ilk", "tvl1"}, optional
        Optical-flow solver. ``"ilk"`` (iterative Lucas-Kanade) suits the
        smooth, small deformations between rounds; it was both faster and
        more accurate than ``"tvl1"`` on simulated data.
    radius : int, optional
        ``"ilk"``: half-width of the local window, in coarse voxels.
    num_warp : int, optional
        Number of warps of the moving image (both solvers).
    smooth_sigma : float, optional
        Standard deviation, in coarse voxels, of the Gaussian applied to the
        flow (0: none).
    attachment, tightness, num_iter : float, float, int, optional
        ``"tvl1"`` only (see ``optical_flow_tvl1``).

    Returns
    -------
    field : ndarray of float32, shape (3, ceil(Z/f_z), ceil(Y/f_y), ceil(X/f_x))
        Components (z, y, x) of the non-rigid displacement in
        **full-resolution pixels**, without the rigid shift. Sample
        ``field[:, j, k, l]`` belongs to the full-resolution position
        ``p = (f_z j + (f_z - 1)/2, f_y k + (f_y - 1)/2, f_x l + (f_x - 1)/2)``
        (the centre of its block); there a point of ``reference`` appears in
        ``moving`` at ``p + shift_zyx_px + field[:, j, k, l]`` (the sense of
        the simulator's ``shift_zyx_px + deformation_r``). Use
        :func:`upsample_field` / :func:`total_displacement` for every voxel
        and :func:`apply_transform` to resample ``moving``.

    Raises
    ------
    InputError
        Shape mismatch, blank image, bad ``downsample`` or ``method``.
    """
    from skimage.registration import optical_flow_tvl1

    reference, moving = _check_pair(reference, moving, "optical_flow_field")
    _check_not_blank(reference, "optical_flow_field: reference")
    _check_not_blank(moving, "optical_flow_field: moving")
    if method not in ("ilk", "tvl1"):
        raise InputError(f"optical_flow_field: method must be 'ilk' or 'tvl1', got {method!r}")
    factors = _factors(downsample)
    shift = rigid_shift(reference, moving) if shift_zyx_px is None else _check_shift(shift_zyx_px)
    f = np.asarray(factors, dtype=np.float64)
    ref_c = _normalise(block_mean(reference, factors))
    mov_c = _normalise(block_mean(moving, factors))
    # Coarse sample j averages the block centred at f j + (f - 1)/2; the block
    # of apply_transform(moving, shift) there is the block of moving centred
    # at f j + (f - 1)/2 + shift, i.e. coarse position j + shift / f.
    mov_c = ndi.shift(mov_c, -shift / f, order=3, mode="nearest", output=np.float32)
    if method == "ilk":
        flow = iterative_lucas_kanade(ref_c, mov_c, radius=int(radius), num_warp=int(num_warp))
    else:
        flow = optical_flow_tvl1(ref_c, mov_c, attachment=attachment, tightness=tightness,
                                 num_warp=int(num_warp), num_iter=int(num_iter), prefilter=False,
                                 dtype=np.float32)
    flow = np.asarray(flow, dtype=np.float32)
    if smooth_sigma and smooth_sigma > 0:
        for c in range(3):
            flow[c] = ndi.gaussian_filter(flow[c], float(smooth_sigma), mode="nearest")
    flow *= f.astype(np.float32).reshape(3, 1, 1, 1)
    return np.ascontiguousarray(flow, dtype=np.float32)


def iterative_lucas_kanade(reference, moving, *, radius=2, num_warp=3):
    """scikit-image's ``optical_flow_ilk`` (Gaussian window, no prefilter) for 3D float32 volumes, with its
    3 x 3 systems solved in closed form.

    The same algorithm, step for step: the coarse-to-fine pyramid of
    :func:`skimage.registration.optical_flow_ilk`, and at every level
    ``num_warp`` times: warp ``moving`` by the flow (linear, edge values
    beyond the border), take its gradient ``g``, and at every voxel solve
    ``A u = b`` with ``A_ij = G(g_i g_j)``, ``b_i = G(g_i e)`` (``G`` the
    Gaussian window of sigma ``(2 radius + 1) / 4``, ``e`` the linearised
    error); systems with ``|det A| < 1e-14`` give 0. scikit-image solves the
    systems with a batched ``numpy.linalg.solve``, most of the flow's time
    and, holding the GIL, it kept two rounds from running side by side
    (benchmarks/RESULTS.md). Here ``u = adj(A) b / det A`` over whole arrays
    (float32; the flow agrees with scikit-image's to float32 round-off on the
    simulator's fiducials, tests/test_registration.py).

    Parameters
    ----------
    reference, moving : ndarray of float32, shape (Z, Y, X)
    radius : int
        Half-width of the window (its Gaussian's sigma is ``(2 radius + 1) / 4``).
    num_warp : int
        Warps of ``moving`` per pyramid level.

    Returns
    -------
    ndarray of float32, shape (3, Z, Y, X)
        ``flow[:, p]``: where the content of ``reference`` at ``p`` is in
        ``moving`` (``moving[p + flow[:, p]] ~ reference[p]``), in voxels.
    """
    try:   # the pyramid of optical_flow_ilk itself, so that only the per-level solver differs
        from skimage.registration._optical_flow_utils import _coarse_to_fine
    except ImportError:  # pragma: no cover - a scikit-image without it: its own solver
        from skimage.registration import optical_flow_ilk

        return optical_flow_ilk(reference, moving, radius=radius, num_warp=num_warp, gaussian=True,
                                prefilter=False, dtype=np.float32)

    def solver(level_reference, level_moving, flow0):
        return _lucas_kanade_level(level_reference, level_moving, flow0, radius, num_warp)

    return _coarse_to_fine(reference, moving, solver, dtype=np.float32)


def _lucas_kanade_level(reference, moving, flow, radius, num_warp):
    """One pyramid level of :func:`iterative_lucas_kanade`, starting from ``flow``."""
    sigma = 3 * ((2 * radius + 1) / 4,)

    def window(a):
        return ndi.gaussian_filter(a, sigma, mode="mirror")

    grid = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in reference.shape], indexing="ij", sparse=True)
    for _ in range(num_warp):
        warped = ndi.map_coordinates(moving, [g + f for g, f in zip(grid, flow)], order=1, mode="nearest",
                                     prefilter=False)
        grad = np.gradient(warped)
        error = grad[0] * flow[0] + grad[1] * flow[1] + grad[2] * flow[2] + reference - warped
        del warped
        a00, a01, a02 = window(grad[0] * grad[0]), window(grad[0] * grad[1]), window(grad[0] * grad[2])
        a11, a12, a22 = window(grad[1] * grad[1]), window(grad[1] * grad[2]), window(grad[2] * grad[2])
        b = [window(g * error) for g in grad]
        del grad, error
        # Cofactors of the symmetric A: adj(A) is symmetric too.
        c00, c01, c02 = a11 * a22 - a12 * a12, a02 * a12 - a01 * a22, a01 * a12 - a02 * a11
        c11, c12, c22 = a00 * a22 - a02 * a02, a01 * a02 - a00 * a12, a00 * a11 - a01 * a01
        det = a00 * c00 + a01 * c01 + a02 * c02
        del a00, a01, a02, a11, a12, a22
        usable = np.abs(det) >= 1e-14
        inverse_det = np.divide(1, det, out=np.zeros_like(det), where=usable)
        flow = np.stack([(c00 * b[0] + c01 * b[1] + c02 * b[2]) * inverse_det,
                         (c01 * b[0] + c11 * b[1] + c12 * b[2]) * inverse_det,
                         (c02 * b[0] + c12 * b[1] + c22 * b[2]) * inverse_det]).astype(np.float32, copy=False)
    return flow


def _interp_axis(arr, axis, i0, w):
    a = np.take(arr, i0, axis=axis)
    if arr.shape[axis] == 1:
        return a
    b = np.take(arr, i0 + 1, axis=axis)
    shape = [1] * arr.ndim
    shape[axis] = len(w)
    w = w.reshape(shape)
    return a + w * (b - a)


def _upsample_slab(field, full_shape, factors, z0, z1):
    out = np.asarray(field, dtype=np.float32)
    for axis, (n, f) in enumerate(zip(full_shape, factors)):
        start, stop = (z0, z1) if axis == 0 else (0, n)
        i0, w = linear_weights(n, field.shape[1 + axis], f, start, stop)
        out = _interp_axis(out, 1 + axis, i0, w)
    return out


def upsample_field(field, full_shape, downsample=DEFAULT_DOWNSAMPLE):
    """Linear interpolation of a coarse displacement field to every voxel.

    Parameters
    ----------
    field : ndarray, shape (3, ceil(Z/f_z), ceil(Y/f_y), ceil(X/f_x))
        Output of :func:`optical_flow_field` (full-resolution pixels).
    full_shape : tuple of 3 int
        (Z, Y, X) of the full-resolution image.
    downsample : int or sequence of 3 int, optional
        The ``downsample`` the field was computed with.

    Returns
    -------
    ndarray of float32, shape (3, Z, Y, X)
        The field at every voxel: coarse sample ``j`` sits at
        ``f j + (f - 1) / 2`` (the centre of its block); values are
        interpolated linearly between sample centres and held constant
        beyond the outermost ones (within ``(f - 1) / 2`` voxels of the
        border). Separable, O(output) time, no coordinate arrays.
    """
    full_shape = tuple(int(n) for n in full_shape)
    if len(full_shape) != 3:
        raise InputError(f"upsample_field: full_shape must be (Z, Y, X), got {full_shape}")
    factors = _factors(downsample)
    field = _check_field(field, full_shape, factors)
    return np.ascontiguousarray(_upsample_slab(field, full_shape, factors, 0, full_shape[0]))


def _slab_planes(plane_voxels, slab_voxels):
    return max(1, int(slab_voxels // max(plane_voxels, 1)))


def total_displacement(shift_zyx_px, field, full_shape, downsample=DEFAULT_DOWNSAMPLE, *,
                       slab_voxels=SLAB_VOXELS):
    """``shift_zyx_px + upsample_field(field)`` at every voxel (the total displacement).

    Parameters
    ----------
    shift_zyx_px : sequence of 3 float
    field : ndarray or None
        Coarse field from :func:`optical_flow_field`; ``None`` for a rigid
        transform.
    full_shape : tuple of 3 int
    downsample : int or sequence of 3 int, optional
    slab_voxels : int, optional
        Voxels upsampled at a time.

    Returns
    -------
    ndarray of float32, shape (3, Z, Y, X)
        A point at ``p`` of the reference appears in the moving image at
        ``p + out[:, p]``.
    """
    shift = _check_shift(shift_zyx_px)
    full_shape = tuple(int(n) for n in full_shape)
    out = np.empty((3,) + full_shape, dtype=np.float32)
    out[:] = shift.astype(np.float32).reshape(3, 1, 1, 1)
    if field is not None:
        factors = _factors(downsample)
        field = _check_field(field, full_shape, factors)
        step = _slab_planes(full_shape[1] * full_shape[2], slab_voxels)
        for z0 in range(0, full_shape[0], step):
            z1 = min(z0 + step, full_shape[0])
            out[:, z0:z1] += _upsample_slab(field, full_shape, factors, z0, z1)
    return out


# resampling ------------------------------------------------------------------------------------
def apply_transform(image, shift_zyx_px, field=None, *, downsample=DEFAULT_DOWNSAMPLE, order=1, mode="nearest",
                    cval=0.0, slab_voxels=SLAB_VOXELS):
    """Resample a moving image onto the reference grid.

    ``out[p] = image[p + shift_zyx_px + upsample_field(field)[:, p]]`` for
    every voxel ``p`` of the reference grid (the field term is omitted when
    ``field`` is None), interpolated as ``scipy.ndimage.map_coordinates`` does
    (the default, linear with edges repeated, by a compiled kernel that
    interpolates the field on the fly: :func:`merfishflow.image.kernels.warp_linear`).

    Parameters
    ----------
    image : ndarray, shape (Z, Y, X)
        The moving (round r) image, any real dtype.
    shift_zyx_px : sequence of 3 float
        Rigid displacement in the module's convention (:func:`rigid_shift`).
    field : ndarray, optional
        Coarse field from :func:`optical_flow_field`, shape
        ``(3, ceil(Z/f), ceil(Y/f), ceil(X/f))``.
    downsample : int or sequence of 3 int, optional
        The ``downsample`` the field was computed with.
    order : int, optional
        Spline order: 1 (linear, default) or 3 (cubic; the spline
        coefficients are computed once, in float32, for the whole image).
    mode : str, optional
        How to sample outside ``image`` (``map_coordinates`` modes;
        default ``"nearest"``: repeat the edge). Use ``"constant"`` with
        ``cval=np.nan`` to mark voxels with no data.
    cval : float, optional
        Value outside the image for ``mode="constant"``.
    slab_voxels : int, optional
        Output voxels computed at a time: peak extra memory is about
        ``12 * slab_voxels`` bytes of coordinates (default 4 Mi voxels, 48 MB),
        plus the float32 spline coefficients for ``order > 1``.

    Returns
    -------
    ndarray of float32, shape (Z, Y, X)
    """
    image = as_volume(image, "apply_transform: image")
    shift = _check_shift(shift_zyx_px)
    if order not in (0, 1, 2, 3, 4, 5):
        raise InputError(f"apply_transform: order must be 0..5, got {order!r}")
    factors = _factors(downsample)
    if field is not None:
        field = _check_field(field, image.shape, factors)
    nz, ny, nx = image.shape
    if order == 1 and mode == "nearest":
        return _warp_linear(image, shift, field, factors)
    if order > 1:
        coeffs = ndi.spline_filter(image, order=order, mode=mode, output=np.float32)
    else:
        coeffs = image
    out = np.empty(image.shape, dtype=np.float32)
    step = _slab_planes(ny * nx, slab_voxels)
    gy = np.arange(ny, dtype=np.float32).reshape(1, ny, 1)
    gx = np.arange(nx, dtype=np.float32).reshape(1, 1, nx)
    shift32 = shift.astype(np.float32)
    for z0 in range(0, nz, step):
        z1 = min(z0 + step, nz)
        if field is not None:
            coords = _upsample_slab(field, image.shape, factors, z0, z1)
        else:
            coords = np.zeros((3, z1 - z0, ny, nx), dtype=np.float32)
        coords[0] += (np.arange(z0, z1, dtype=np.float32) + shift32[0]).reshape(-1, 1, 1)
        coords[1] += gy + shift32[1]
        coords[2] += gx + shift32[2]
        ndi.map_coordinates(coeffs, coords, output=out[z0:z1], order=order, mode=mode, cval=cval,
                            prefilter=False)
    return out


def _warp_linear(image, shift, field, factors):
    """apply_transform's default (order 1, edges repeated) by the compiled kernel: no coordinate arrays."""
    from .kernels import warp_linear

    out = np.empty(image.shape, dtype=np.float32)
    if field is None:
        weights = (np.zeros(0, np.intp), np.zeros(0, np.float32)) * 3    # (indices, weights) per axis, unused
        field = np.zeros((0, 1, 1, 1), np.float32)
    else:
        weights = []
        for n, coarse, f in zip(image.shape, field.shape[1:], factors):
            weights += linear_weights(n, coarse, f)
        field = np.ascontiguousarray(field, dtype=np.float32)
    warp_linear(np.ascontiguousarray(image), out, 0, np.asarray(shift, np.float64), field, *weights)
    return out


# quality ---------------------------------------------------------------------------------------
def normalized_cross_correlation(a, b, mask=None):
    """Pearson correlation of two images (over ``mask`` if given), in [-1, 1]."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise InputError(f"normalized_cross_correlation: shapes differ: {a.shape} and {b.shape}")
    if mask is not None:
        a, b = a[mask], b[mask]
    a = a - a.mean()
    b = b - b.mean()
    denom = np.sqrt(np.sum(a * a) * np.sum(b * b))
    return float(np.sum(a * b) / denom) if denom > 0 else 0.0


@dataclass(frozen=True)
class RoundRegistration:
    """Result of :func:`register_round`.

    Attributes
    ----------
    shift_zyx_px : ndarray of float64, shape (3,)
        Rigid displacement (a point at ``p`` in round 0 is at
        ``p + shift_zyx_px`` in this round), from :func:`rigid_shift`.
    field : ndarray of float32 or None
        Coarse non-rigid remainder from :func:`optical_flow_field` (full
        resolution pixels), None when not computed.
    downsample : tuple of 3 int
        Block size of ``field``'s grid.
    ncc_before, ncc_rigid, ncc_after : float or None
        Normalised cross-correlation of the reference with the moving image
        unregistered, after the rigid shift, and after shift + the optical
        flow field (None when not computed; the flow's score even when the
        field was rejected), over the interior of the image (a margin of
        ``ceil(max |displacement|) + 1`` voxels per side dropped where the
        image is large enough).
    flow_accepted : bool or None
        Whether the optical-flow field was kept (``ncc_after`` at least
        ``min_flow_gain`` above ``ncc_rigid``); None when no field was
        computed or no guard was asked for. A rejected field is not in
        ``field`` (None: the rigid result is applied) but in ``rejected_field``.
    rejected_field : ndarray of float32 or None
        The optical-flow field that was computed and rejected.
    registered : ndarray of float32 or None
        ``moving`` resampled by the kept transform (``apply(moving)``), when
        the scores were computed (they need it); None otherwise.
    """

    shift_zyx_px: np.ndarray
    field: np.ndarray | None
    downsample: tuple
    ncc_before: float | None = None
    ncc_rigid: float | None = None
    ncc_after: float | None = None
    flow_accepted: bool | None = None
    rejected_field: np.ndarray | None = None
    registered: np.ndarray | None = None

    def displacement(self, full_shape):
        """Total displacement at every voxel, see :func:`total_displacement`."""
        return total_displacement(self.shift_zyx_px, self.field, full_shape, self.downsample)

    def apply(self, image, **kwargs):
        """Resample ``image`` (this round, any channel) onto the reference grid, see :func:`apply_transform`."""
        return apply_transform(image, self.shift_zyx_px, self.field, downsample=self.downsample, **kwargs)


def _interior(shape, margin):
    return tuple(slice(m, n - m) if n > 2 * m + 1 else slice(None) for n, m in zip(shape, margin))


def central_crop(shape, size_yx):
    """Index of the central ``size_yx`` x ``size_yx`` block (all z) of a volume, or everything if smaller."""
    if size_yx is None:
        return (slice(None),) * len(shape)
    out = [slice(None)]
    for n in shape[1:]:
        start = max(0, (n - int(size_yx)) // 2)
        out.append(slice(start, start + min(n, int(size_yx))))
    return tuple(out)


THIN_STACK_PLANES = 4


def rigid_shift_yx(reference, moving, *, upsample_factor=20, window_alpha=0.3):
    """Sub-pixel y/x shift of a single plane or thin stack (z shift 0), see :func:`rigid_shift`.

    With ``THIN_STACK_PLANES`` planes or fewer there is no z structure to
    correlate (the Tukey window alone would zero the outer planes of a 3-plane
    stack), so each stack's z-sum is phase-correlated in 2D.

    Returns
    -------
    shift_zyx_px : ndarray of float64, shape (3,)
        ``(0, dy, dx)``.
    """
    reference, moving = _check_pair(reference, moving, "rigid_shift_yx")
    return PhaseCorrelator(reference, upsample_factor=upsample_factor, window_alpha=window_alpha,
                           project_z=True).shift(moving)


def round_correlator(reference, *, upsample_factor=20, rigid_crop_yx=None):
    """The :class:`PhaseCorrelator` :func:`register_round` estimates a round's rigid shift with: on the central
    ``rigid_crop_yx`` block, and in y/x only for a stack of ``THIN_STACK_PLANES`` planes or fewer. Build it
    once per reference and pass it to every round's :func:`register_round`."""
    reference = as_volume(reference, "register_round: reference")
    return PhaseCorrelator(reference, upsample_factor=upsample_factor, crop_yx=rigid_crop_yx,
                           project_z=reference.shape[0] <= THIN_STACK_PLANES)


def register_round(reference, moving, *, upsample_factor=20, downsample=DEFAULT_DOWNSAMPLE, method="ilk",
                   flow=True, metrics=True, rigid_crop_yx=None, min_flow_gain=0.0, correlator=None, **flow_kwargs):
    """Rigid shift, then optical flow, of one round's fiducial onto round 0's.

    A stack of ``THIN_STACK_PLANES`` planes or fewer gets a rigid y/x shift
    only (:func:`rigid_shift_yx`; no z shift, no flow field).

    The flow field is kept only where it makes the round align better: if
    the normalised cross-correlation with the reference after shift + field
    does not exceed the one after the shift alone by ``min_flow_gain``, the
    field is rejected and the rigid result stands. On sparse fiducials
    (beads) the flow has little to follow between beads and mostly adds
    false displacements, which this catches.

    Parameters
    ----------
    reference, moving : ndarray, shape (Z, Y, X)
    upsample_factor : int, optional
        See :func:`rigid_shift`.
    downsample : int or sequence of 3 int, optional
        See :func:`optical_flow_field`.
    method : {"ilk", "tvl1"}, optional
    flow : bool, optional
        Compute the optical-flow field (else rigid only).
    rigid_crop_yx : int, optional
        Estimate the rigid shift on the central ``rigid_crop_yx`` squared
        block only (all z): phase correlation holds about five complex64
        copies of what it correlates, 17 GB for a whole 100 x 2048 x 2048
        tile. The optical flow then corrects what the crop's shift misses.
    metrics : bool, optional
        Compute the normalised cross-correlations (three resamplings of
        ``moving``; costs about as much as the optical flow). Always done
        when a flow field is computed and ``min_flow_gain`` is not None.
    min_flow_gain : float or None, optional
        Keep the flow field only if it raises the correlation by more than
        this; None keeps it unconditionally.
    correlator : PhaseCorrelator, optional
        ``round_correlator(reference, upsample_factor=..., rigid_crop_yx=...)``,
        built once for many rounds (then ``upsample_factor`` and
        ``rigid_crop_yx`` are its own); built here if omitted.
    **flow_kwargs
        Further arguments of :func:`optical_flow_field`.

    Returns
    -------
    RoundRegistration
    """
    reference, moving = _check_pair(reference, moving, "register_round")
    if correlator is None:
        correlator = round_correlator(reference, upsample_factor=upsample_factor, rigid_crop_yx=rigid_crop_yx)
    elif correlator.shape != reference.shape:
        raise InputError(f"register_round: the correlator was built for shape {correlator.shape}, "
                         f"the reference has {reference.shape}")
    shift = correlator.shift(moving)
    # Too few planes for a z shift or a 3D flow: rigid in y/x only.
    flow = flow and not correlator.project_z
    factors = _factors(downsample)
    field = None
    if flow:
        field = optical_flow_field(reference, moving, shift_zyx_px=shift, downsample=factors, method=method,
                                   **flow_kwargs)
    ncc = [None, None, None]
    guard = field is not None and min_flow_gain is not None
    registered, accepted, rejected = None, None, None
    if metrics or guard:
        reach = np.abs(shift) + (np.abs(field).max(axis=(1, 2, 3)) if field is not None else 0.0)
        inner = _interior(reference.shape, np.ceil(reach).astype(int) + 1)
        ref = reference[inner]
        ncc[0] = normalized_cross_correlation(ref, moving[inner])
        registered = apply_transform(moving, shift)
        ncc[1] = normalized_cross_correlation(ref, registered[inner])
        if field is not None:
            flowed = apply_transform(moving, shift, field, downsample=factors)
            ncc[2] = normalized_cross_correlation(ref, flowed[inner])
            if guard:
                accepted = bool(ncc[2] > ncc[1] + float(min_flow_gain))
            if accepted is not False:
                registered = flowed
            del flowed
    if accepted is False:
        field, rejected = None, field
    return RoundRegistration(shift, field, factors, *ncc, flow_accepted=accepted, rejected_field=rejected,
                             registered=registered)

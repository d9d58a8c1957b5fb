"""3D Richardson–Lucy deconvolution (matched or Wiener–Butterworth back projector), tiled in y/x, CPU or GPU.

Pure functions in the style of scikit-image: arrays in, arrays out, no file
I/O and nothing Snakemake-specific. The PSF is the one the simulator renders
with and ``calibrations.zarr/psf_data`` stores (:func:`merfishflow.image.psf.widefield_psf`:
float32, odd support, unit sum); the caller checks that it was computed for the
image's voxel size with :func:`check_psf_matches`.

Algorithm
---------
Richardson–Lucy (Richardson 1972, Lucy 1974) for Poisson data ``d`` and a
PSF ``h`` normalised to unit sum::

    u_0     = mean(d)                                  (flat, whole image)
    u_{k+1} = u_k * correlate(d / max(convolve(u_k, h), eps), h)

with ``eps = 1e-6 * mean(d)`` guarding the division and the final estimate
clipped at 0 (FFT round-off can leave tiny negative values). Convolution and
correlation use real FFTs (``rfftn``/``irfftn``) of the block padded to a
fast FFT length; the PSF's transfer function (OTF) and its complex conjugate
(for the correlation) are computed once per block shape, so one iteration
costs exactly two forward and two inverse real FFTs plus five element-wise
passes; the first costs half (the flat start blurs to itself). Everything is float32 / complex64.

Acceleration
------------
With ``acceleration="biggs_andrews"`` each update is applied at a point
extrapolated along the previous step (Biggs & Andrews 1997):
``y_k = max(x_k + a_k (x_k - x_{k-1}), 0)``, ``x_{k+1} = y_k * correlate(d /
convolve(y_k, h), h)``, with ``a_k`` the clipped correlation of the last two
steps. The FFTs per iteration are the same; about six element-wise passes and
two dot products are added, and two more block buffers are held. It reaches
the sharpness of plain iterations in about half as many.

Back projector
--------------
With ``back_projector="wiener_butterworth"`` the correlation with ``h`` in the update is replaced by a
convolution with the kernel of :func:`wiener_butterworth_kernel`, an *unmatched* back projector
(Guo et al. 2020, Nat. Biotechnol. 38:1337) that lifts the lateral frequencies the PSF damps, up to
its resolution limit. About 3 iterations then sharpen spots as much as 20 accelerated matched ones
(benchmarks/RESULTS.md). The FFTs per iteration are the same. The kernel has negative lobes, so the
estimate is clipped at 0 after every iteration, and the flux is no longer kept exactly: the sharpened
background noise, clipped, adds to it (how much: benchmarks/RESULTS.md).

Boundaries and tiling
---------------------
In z, a PSF that is even in z (``psf == psf[::-1]``, as the widefield model
without refractive-index mismatch and a Gaussian are) lets the stack be
continued by its mirror image about the first and last plane (numpy's
``"reflect"``, the default ``pad_mode``) *without padding*: convolving a
mirror-extended signal with an even kernel gives a mirror-extended signal, and
the type-I discrete cosine transform diagonalises that convolution (the
symmetric convolution theorem; Martucci 1994, IEEE Trans. Signal Process.
42:1038). The z axis is then transformed with ``scipy.fft.dct(type=1)`` on its
own ``nz`` planes and y/x with real FFTs; the kernel's z transform is its
cosine sum ``sum_m h[m] cos(pi k m / (nz - 1))``, exact for any PSF depth (also
deeper than the stack; one plane: the PSF's z sum). This halves the FFT work of
a thin stack (9 planes instead of ``next_fast_len(9 + 2 * 4)`` = 18), and is
``z_boundary="mirror"``. The mirror passes through the outer planes, so a spot
in the first plane stays one spot (a half-sample mirror would pair it with its
image one plane out; benchmarks/RESULTS.md). Otherwise (``"pad"``, and ``"auto"`` with a PSF that
is not even in z, e.g. a measured one) the block is padded in z by the PSF
half-size with ``pad_mode`` and transformed by FFT like y/x.

In y/x each block is padded per side by twice the PSF half-size
(``pad_mode`` ``"reflect"`` (default) or ``"edge"`` beyond the image border;
real neighbouring data inside the image) and further to ``scipy.fft.next_fast_len(..., real=True)``.
With ``tile_yx`` the volume is cut in y/x into *cores* of at most ``tile_yx``
voxels (the full z extent always); each block is its core plus
``overlap_yx`` voxels of margin per side plus the padding. Neighbouring
blocks are blended with a raised-cosine ramp over the ``overlap_yx``-wide
band centred on the core boundary (their weights sum to 1); the outer half of
each margin and the padding are context only. All blocks have the same shape,
so the OTF is computed once, and only one block's buffers are alive at a
time: see :func:`richardson_lucy_peak_bytes`.

Stopping
--------
With ``stop_tolerance`` a block stops after the first iteration ``k`` whose
relative change ``||u_k - u_{k-1}||_2 / ||u_{k-1}||_2`` (L2 norms over the
whole padded block) is below the tolerance, or after ``n_iter``. Blocks stop
independently, so in tiled mode neighbouring blocks may use different
iteration counts (their difference is then of the order of the tolerance).
Pass ``return_info=True`` to get the counts.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft

from ..cpus import available_cpus, blas_threads
from ..errors import InputError

__all__ = [
    "RichardsonLucyInfo",
    "check_psf_matches",
    "default_overlap_yx",
    "psf_is_even_in_z",
    "richardson_lucy",
    "richardson_lucy_peak_bytes",
    "wiener_butterworth_kernel",
]

PAD_MODES = ("reflect", "edge")
Z_BOUNDARIES = ("auto", "mirror", "pad")
# A PSF counts as even in z when its mirror image differs by at most this fraction of its peak:
# float32 round-off of a symmetric model, not the noise of a measured bead.
Z_EVEN_RTOL = 1e-5
# Up to this many planes the mirror boundary's DCT in z is a float32 matrix product (sgemm), above it
# pocketfft's DCT, which transforms each z line of a block separately and was slower at every depth
# measured up to 100 planes (benchmarks/RESULTS.md, "This stop: the mirror z boundary").
DCT_MATMUL_MAX_PLANES = 128
# Lateral padding / context beyond the margins, in PSF half-sizes (z uses 1). With 1, the circular
# wrap of the padded block changed the outermost image voxels by up to 0.7 % of the maximum between
# tiled and untiled runs (30 iterations); with 2, 0.1 %; the FFT block grows by ~4 % laterally.
PAD_FACTOR_YX = 2
EPS_RELATIVE = 1e-6  # division guard, relative to the image mean
ACCELERATIONS = (None, "biggs_andrews")
BACK_PROJECTORS = ("matched", "wiener_butterworth")
# Wiener–Butterworth back projector (after Guo et al. 2020): the Wiener constant relative to the OTF's peak,
# the lateral gain at the resolution limit, and the Butterworth order; chosen by F1 (benchmarks/RESULTS.md).
WB_ALPHA = 3e-3
WB_BETA = 0.05
WB_ORDER = 10
# Upper bound of the Biggs–Andrews extrapolation weight: steps at 1 can overshoot into oscillation.
ALPHA_MAX = 0.95


# results -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RichardsonLucyInfo:
    """What :func:`richardson_lucy` did (returned with ``return_info=True``).

    Attributes
    ----------
    iterations : ndarray of int, shape (n_blocks_y, n_blocks_x)
        Iterations run in every block (``n_iter`` unless it stopped early).
    final_change : ndarray of float, shape (n_blocks_y, n_blocks_x)
        Relative L2 change of each block's last iteration; NaN when
        ``stop_tolerance`` is None (it is not computed then).
    fft_shape_zyx : tuple of 3 int
        Padded block shape the transforms ran on.
    backend : str
        ``"numpy"`` or ``"cupy"``.
    z_boundary : str
        ``"mirror"`` (cosine transform in z, no z padding) or ``"pad"``.
    """

    iterations: np.ndarray
    final_change: np.ndarray
    fft_shape_zyx: tuple
    backend: str
    z_boundary: str = "pad"

    @property
    def max_iterations(self) -> int:
        """Largest iteration count of any block."""
        return int(self.iterations.max())


# validation --------------------------------------------------------------------------------------
def check_psf_matches(psf_voxel_size_zyx_um, image_voxel_size_zyx_um, *, rtol=1e-3):
    """Raise :class:`InputError` unless the PSF was sampled on the image's voxel grid.

    Parameters
    ----------
    psf_voxel_size_zyx_um, image_voxel_size_zyx_um : sequence of 3 float
        (dz, dy, dx) in µm of the PSF and of the image.
    rtol : float
        Relative tolerance per axis.

    Raises
    ------
    InputError
        If either is not 3 positive finite numbers, or they differ by more
        than ``rtol`` in any axis; the message names both values.
    """
    def as_voxel(value, name):
        try:
            v = tuple(float(x) for x in value)
        except (TypeError, ValueError):
            raise InputError(f"{name}={value!r} must be 3 numbers (dz, dy, dx) in µm") from None
        if len(v) != 3 or not all(math.isfinite(x) and x > 0 for x in v):
            raise InputError(f"{name}={value!r} must be 3 positive numbers (dz, dy, dx) in µm")
        return v

    psf_v = as_voxel(psf_voxel_size_zyx_um, "psf_voxel_size_zyx_um")
    img_v = as_voxel(image_voxel_size_zyx_um, "image_voxel_size_zyx_um")
    if not np.allclose(psf_v, img_v, rtol=rtol, atol=0):
        raise InputError(
            f"PSF voxel size {list(psf_v)} µm does not match the image voxel size {list(img_v)} µm (z, y, x); "
            "recompute the PSF (merfishflow.image.psf.widefield_psf) for the image's voxel size"
        )


def _check_psf(psf) -> np.ndarray:
    psf = np.asarray(psf)
    if psf.ndim != 3:
        raise InputError(f"psf must be a 3D (z, y, x) array, got {psf.ndim} dimensions, shape {psf.shape}")
    if any(n % 2 == 0 for n in psf.shape):
        raise InputError(f"psf must have an odd size in every axis (centred PSF), got shape {psf.shape}")
    if not np.issubdtype(psf.dtype, np.number) or np.iscomplexobj(psf):
        raise InputError(f"psf must be real-valued, got dtype {psf.dtype}")
    psf = psf.astype(np.float64)
    if not np.all(np.isfinite(psf)):
        raise InputError("psf contains NaN or infinite values")
    if psf.min() < 0:
        raise InputError(f"psf must be non-negative, its minimum is {psf.min():g}")
    total = psf.sum()
    if not total > 0:
        raise InputError("psf sums to 0")
    return (psf / total).astype(np.float32)


def _pair(value, name, minimum):
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value, value)
    try:
        pair = tuple(int(v) for v in value)
        ok = len(pair) == 2 and all(float(a) == float(b) for a, b in zip(pair, value))
    except (TypeError, ValueError):
        ok = False
    if not ok or any(v < minimum for v in pair):
        raise InputError(f"{name}={value!r} must be an integer or a pair of integers >= {minimum}")
    return pair


def _scan_image(image) -> float:
    """Check ``image`` (finite, non-negative) plane by plane; return its mean (float64)."""
    if image.ndim != 3:
        raise InputError(f"image must be a 3D (z, y, x) array, got {image.ndim} dimensions, shape {image.shape}")
    if image.size == 0:
        raise InputError(f"image is empty, shape {image.shape}")
    if image.dtype == bool or not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise InputError(f"image must have an integer or floating dtype, got {image.dtype}")
    floating = np.issubdtype(image.dtype, np.floating)
    signed = np.issubdtype(image.dtype, np.signedinteger)
    total = 0.0
    for z, plane in enumerate(image):
        if floating and not np.all(np.isfinite(plane)):
            raise InputError(f"image contains NaN or infinite values (first in plane z={z})")
        if (floating or signed) and plane.min() < 0:
            raise InputError(f"image must be non-negative (subtract the camera offset and clip first); "
                             f"plane z={z} has minimum {plane.min()}")
        total += float(np.sum(plane, dtype=np.float64))
    return total / image.size


# back projectors ---------------------------------------------------------------------------------
def _half_maximum_width(profile) -> float | None:
    """Full width at half maximum of a 1D profile peaked at its centre, in samples (linear interpolation
    between samples); None when the profile does not fall to half its peak on both sides."""
    profile = np.asarray(profile, dtype=np.float64)
    centre = profile.size // 2
    peak = profile[centre]
    if not peak > 0:
        return None
    half = 0.5 * peak
    edges = []
    for step in (1, -1):
        i = centre
        while 0 <= i + step < profile.size and profile[i + step] > half:
            i += step
        if not 0 <= i + step < profile.size:
            return None
        inside, outside = profile[i], profile[i + step]
        edges.append(i + step * (inside - half) / (inside - outside))
    return float(edges[0] - edges[1])


def wiener_butterworth_kernel(psf, *, alpha=WB_ALPHA, beta=WB_BETA, order=WB_ORDER):
    """Wiener–Butterworth back projector for Richardson–Lucy with an unmatched back projector.

    Guo et al. 2020 (Nat. Biotechnol. 38:1337, "Rapid image deconvolution and multiview fusion for
    optical microscopy") replace the correlation with the PSF in the Richardson–Lucy update by a
    Wiener filter whose gain is rolled off by a Butterworth filter beyond the resolution limit; the
    update then restores in a few iterations what the matched back projector restores in tens.

    Their Wiener filter ``conj(H) / (|H|**2 + alpha)`` divides by the transfer function ``H``
    point by point. A widefield PSF has a missing cone: ``|H|`` is small but not zero at low lateral
    and non-zero axial frequencies, and dividing by it there amplifies the out-of-focus light into
    a halo that alternates in sign from plane to plane (on this project's widefield PSFs one iteration
    widened spots instead of sharpening them: benchmarks/RESULTS.md). Here the division is by the
    largest ``|H|`` over the axial frequencies at each lateral frequency, so the back projector is the
    matched one times a lateral gain, and never gives an axial frequency more weight than the in-focus
    one::

        M(ky, kx) = max over kz of |H(kz, ky, kx)|          (H normalised to a peak of 1)
        B = conj(H) / (M**2 + alpha) / sqrt(1 + e * w**order),   w = ((ky**2 + kx**2) * fwhm**2)
        e = M(cut-off) / (M(cut-off)**2 + alpha) / beta**2 - 1

    with frequencies in cycles per voxel and ``fwhm`` the PSF's lateral full width at half maximum
    (x, through its centre), so ``w = 1`` at the resolution limit, where the lateral gain is
    ``beta``. The kernel is the inverse transform of ``B`` on the PSF's grid, centred, normalised to
    unit sum (the update keeps the flux) and made exactly even in every axis in which the PSF is
    even (the mirror z boundary needs it). A single-plane PSF gives Guo et al.'s 2D filter.

    Parameters
    ----------
    psf : ndarray, shape (pz, py, px)
        Centred PSF with odd sizes (normalised here).
    alpha : float
        Wiener constant, relative to the peak of ``|H|`` (1).
    beta : float
        Lateral gain of the back projector at the resolution limit, in (0, 1).
    order : int
        Butterworth order (the steepness of the roll-off).

    Returns
    -------
    ndarray of float32, shape ``psf.shape``
        The back projector, convolved with the ratio ``data / (estimate * psf)`` in each update.

    Raises
    ------
    InputError
        A bad PSF (as :func:`richardson_lucy`), or ``alpha``, ``beta``, ``order`` out of range.
    """
    psf = _check_psf(psf).astype(np.float64)
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
        raise InputError(f"alpha={alpha!r} must be a positive number")
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and 0 < beta < 1):
        raise InputError(f"beta={beta!r} must be a number in (0, 1)")
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or order < 1:
        raise InputError(f"order={order!r} must be an integer >= 1")
    transfer = np.fft.fftn(np.fft.ifftshift(psf[::-1, ::-1, ::-1]))      # conj(H) of the correlation
    transfer /= np.abs(transfer).max()
    lateral_peak = np.abs(transfer).max(axis=0, keepdims=True)
    gain = 1.0 / (lateral_peak ** 2 + alpha)
    cz, cy, cx = (n // 2 for n in psf.shape)
    width = _half_maximum_width(psf[cz, cy, :])
    if width is not None:
        fy = (np.fft.fftfreq(psf.shape[1]) * width)[:, None]
        fx = (np.fft.fftfreq(psf.shape[2]) * width)[None, :]
        cutoff = min(round(psf.shape[2] / width), psf.shape[2] // 2)         # the limit's frequency index
        excess = float(lateral_peak[0, 0, cutoff] * gain[0, 0, cutoff]) / beta ** 2 - 1
        if excess > 0:
            gain = gain / np.sqrt(1.0 + excess * (fy ** 2 + fx ** 2) ** order)
    kernel = np.fft.fftshift(np.fft.ifftn(transfer * gain).real)
    for axis in range(3):
        if np.allclose(psf, np.flip(psf, axis), rtol=0, atol=Z_EVEN_RTOL * psf.max()):
            kernel = 0.5 * (kernel + np.flip(kernel, axis))
    total = kernel.sum()
    if not total > 0:
        raise InputError("the Wiener–Butterworth back projector sums to <= 0 for this PSF; "
                         "use back_projector='matched'")
    return (kernel / total).astype(np.float32)


# geometry ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _AxisBlock:
    start: int          # first coordinate of the padded block (may be < 0)
    stop: int           # one past the last (may be > n)
    out_start: int      # contributing range [out_start, out_stop) in image coordinates
    out_stop: int
    weights: np.ndarray  # float32 (out_stop - out_start,), blending weights


def _axis_blocks(n, tile, overlap, half):
    """Blocks along one axis: a list of :class:`_AxisBlock` and the padded length.

    ``tile=None``: one block, the axis padded by ``half`` per side (then to a
    fast length). Otherwise cores of at most ``tile`` from an even split, each
    extended by ``overlap + half`` per side (then to the common fast length).
    """
    n_blocks = 1 if tile is None else max(1, math.ceil(n / tile))
    if n_blocks == 1:
        overlap = 0
    bounds = [round(i * n / n_blocks) for i in range(n_blocks + 1)]
    cores = np.diff(bounds)
    if n_blocks > 1 and cores.min() < overlap:
        raise InputError(f"tile_yx={tile} is too small for overlap_yx={overlap} on an axis of {n} voxels "
                         f"(cores of {cores.min()} voxels); use tile_yx >= 2 * overlap_yx")
    length = sfft.next_fast_len(int(cores.max()) + 2 * overlap + 2 * half, real=True)
    lo = overlap // 2
    ramp = 0.5 * (1.0 + np.cos(np.pi * (np.arange(overlap) + 0.5) / max(overlap, 1)))  # 1 -> 0
    blocks = []
    for i in range(n_blocks):
        extra = length - (int(cores[i]) + 2 * overlap + 2 * half)
        start = bounds[i] - overlap - half - extra // 2
        out_start = 0 if i == 0 else bounds[i] - lo
        out_stop = n if i == n_blocks - 1 else bounds[i + 1] + overlap - lo
        w = np.ones(out_stop - out_start, dtype=np.float64)
        if i > 0:
            w[:overlap] = 1.0 - ramp
        if i < n_blocks - 1:
            w[len(w) - overlap:] = ramp
        blocks.append(_AxisBlock(start, start + length, out_start, out_stop, w.astype(np.float32)))
    return blocks, length


def default_overlap_yx(psf_shape_zyx):
    """Default ``overlap_yx``: twice the PSF's lateral half-size, at least 8 voxels.

    Parameters
    ----------
    psf_shape_zyx : tuple of 3 int

    Returns
    -------
    tuple of 2 int
    """
    return tuple(max(8, 2 * (int(n) // 2)) for n in psf_shape_zyx[1:])


def psf_is_even_in_z(psf) -> bool:
    """Whether ``psf`` equals its mirror image in z (to :data:`Z_EVEN_RTOL` of its peak).

    Such a PSF allows the unpadded cosine-transform z boundary of
    :func:`richardson_lucy` (``z_boundary="mirror"``).
    """
    psf = np.asarray(psf, dtype=np.float64)
    peak = float(np.max(np.abs(psf))) if psf.size else 0.0
    return bool(peak > 0 and np.max(np.abs(psf - psf[::-1])) <= Z_EVEN_RTOL * peak)


def _resolve_z_boundary(z_boundary, psf) -> str:
    if z_boundary not in Z_BOUNDARIES:
        raise InputError(f"z_boundary={z_boundary!r} must be one of {Z_BOUNDARIES}")
    even = psf_is_even_in_z(psf)
    if z_boundary == "mirror" and not even:
        raise InputError("z_boundary='mirror' needs a PSF that is even in z (psf == psf[::-1] to "
                         f"{Z_EVEN_RTOL} of its peak); this one is not: use z_boundary='pad' or 'auto'")
    if z_boundary == "auto":
        return "mirror" if even else "pad"
    return z_boundary


def _plan(image_shape, psf_shape, tile_yx, overlap_yx, mirror_z=False):
    nz, ny, nx = (int(n) for n in image_shape)
    hz, hy, hx = (int(n) // 2 for n in psf_shape)
    # The mirror boundary folds any PSF depth into the stack's own planes: no z limit then.
    checked = (("y", ny, hy), ("x", nx, hx)) if mirror_z else (("z", nz, hz), ("y", ny, hy), ("x", nx, hx))
    for axis, n, h in checked:
        if h > n - 1:
            raise InputError(
                f"psf of shape {tuple(psf_shape)} is too large for the image of shape {tuple(image_shape)} in {axis}: "
                f"its half-size {h} needs more than the {n - 1} voxels a reflection of the image can provide; "
                f"crop the PSF to at most {2 * n - 1} voxels in {axis}"
            )
    if tile_yx is None:
        tile, overlap = (None, None), (0, 0)
    else:
        tile = _pair(tile_yx, "tile_yx", 1)
        overlap = default_overlap_yx(psf_shape) if overlap_yx is None else _pair(overlap_yx, "overlap_yx", 0)
    if mirror_z:
        zlen, zstart = nz, 0
    else:
        zlen = sfft.next_fast_len(nz + 2 * hz, real=True)
        zstart = -hz - (zlen - nz - 2 * hz) // 2
    zblock = _AxisBlock(zstart, zstart + zlen, 0, nz, np.ones(nz, dtype=np.float32))
    yblocks, ylen = _axis_blocks(ny, tile[0], overlap[0], PAD_FACTOR_YX * hy)
    xblocks, xlen = _axis_blocks(nx, tile[1], overlap[1], PAD_FACTOR_YX * hx)
    return zblock, yblocks, xblocks, (zlen, ylen, xlen)


# memory model ------------------------------------------------------------------------------------
# Block buffers alive at the peak of an iteration: the padded data, the estimate and the inverse
# FFT's output (float32); the OTF, its conjugate, the spectrum and one transform work array
# (complex64); plus the staging copy of the block's input.
_REAL_BUFFERS = 3
_COMPLEX_BUFFERS = 4
_ACCELERATION_BUFFERS = 2


def richardson_lucy_peak_bytes(image_shape_zyx, psf_shape_zyx, tile_yx=None, overlap_yx=None, *,
                               input_itemsize=2, include_input=True, acceleration=None, z_boundary="pad"):
    """Estimated peak memory of :func:`richardson_lucy` on the CPU, in bytes.

    Parameters
    ----------
    image_shape_zyx, psf_shape_zyx : tuple of 3 int
    tile_yx, overlap_yx : int or pair of int, optional
        As for :func:`richardson_lucy`.
    input_itemsize : int
        Bytes per input voxel (2 for uint16).
    include_input : bool
        Count the input array itself (it is the caller's, but it is resident).
    acceleration : {None, "biggs_andrews"}
        As for :func:`richardson_lucy`: the extrapolation holds two more
        float32 block buffers (the previous estimate and the previous step).
    z_boundary : {"pad", "mirror"}
        The z boundary :func:`richardson_lucy` resolved to (``"mirror"``
        blocks are not padded in z). ``"pad"`` (default) is the upper bound.

    Returns
    -------
    int
        ``input + float32 output + one block's buffers`` (three float32 and
        four complex64 arrays of the padded block shape, plus a staging copy
        of the block). Measured peaks are within about 10 % of this (see
        ``benchmarks/RESULTS.md``).
    """
    if z_boundary not in ("pad", "mirror"):
        raise InputError(f"z_boundary={z_boundary!r} must be 'pad' or 'mirror'")
    _, _, _, fft_shape = _plan(image_shape_zyx, psf_shape_zyx, tile_yx, overlap_yx, z_boundary == "mirror")
    nvox = int(np.prod(image_shape_zyx))
    block = int(np.prod(fft_shape))
    spectrum = fft_shape[0] * fft_shape[1] * (fft_shape[2] // 2 + 1)
    real_buffers = _REAL_BUFFERS + (_ACCELERATION_BUFFERS if acceleration is not None else 0)
    total = nvox * 4 + real_buffers * block * 4 + _COMPLEX_BUFFERS * spectrum * 8 + block * input_itemsize
    if include_input:
        total += nvox * input_itemsize
    return int(total)


# backends ----------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _dct1_matrix(n, inverse=False):
    """float32 (n, n) matrix of scipy's type-I DCT (``dct(x, type=1) == matrix @ x``), or of its inverse."""
    weights = np.full(n, 2.0)
    weights[[0, -1]] = 1.0
    k = np.arange(n, dtype=np.float64)
    matrix = weights[None, :] * np.cos(np.pi * k[:, None] * k[None, :] / (n - 1))
    if inverse:
        matrix /= 2 * (n - 1)
    matrix = matrix.astype(np.float32)
    matrix.flags.writeable = False
    return matrix


class _NumpyBackend:
    """scipy.fft on the CPU. ``forward``/``inverse`` are the block transforms: real FFT in all axes,
    or with ``mirror_z`` a type-I DCT in z and real FFTs in y/x (see the module's Boundaries)."""

    name = "numpy"
    xp = np

    def __init__(self, workers, mirror_z=False):
        self.workers = workers
        self.mirror_z = mirror_z

    def _dct1_z(self, a, inverse=False, overwrite=False):
        """Type-I DCT along z (scipy's normalisation; ``inverse``: its inverse). One plane: identity."""
        n = a.shape[0]
        if n == 1:
            return a
        if n > DCT_MATMUL_MAX_PLANES:
            transform = sfft.idct if inverse else sfft.dct
            return transform(a, type=1, axis=0, workers=self.workers, overwrite_x=overwrite)
        matrix = _dct1_matrix(n, inverse)
        return np.matmul(matrix, a.reshape(n, -1)).reshape(a.shape)

    def forward(self, a, overwrite=False):
        if self.mirror_z:
            transformed = self._dct1_z(a, overwrite=overwrite)
            return sfft.rfftn(transformed, axes=(1, 2), workers=self.workers,
                              overwrite_x=overwrite or transformed is not a)
        return sfft.rfftn(a, workers=self.workers, overwrite_x=overwrite)

    def forward_yx(self, a):
        return sfft.rfftn(a, axes=(1, 2), workers=self.workers)

    def inverse(self, a, shape):
        # c2c over the leading axes in place, then c2r along the last: same result as
        # scipy.fft.irfftn(a, s=shape), ~1.4x faster for (120, 600, 600) float32 blocks on 2 cores.
        complex_axes = (1,) if self.mirror_z else tuple(range(a.ndim - 1))
        a = sfft.ifftn(a, axes=complex_axes, workers=self.workers, overwrite_x=True)
        a = sfft.irfft(a, n=shape[-1], axis=-1, workers=self.workers, overwrite_x=True)
        if self.mirror_z:
            a = self._dct1_z(a, inverse=True, overwrite=True)
        return a

    def to_device(self, a):
        return a

    def to_host(self, a):
        return a

    def sumsq(self, a):
        return self.dot(a, a)

    def dot(self, a, b):
        # float32 dot per plane, accumulated in float64: no temporaries, deterministic.
        total = 0.0
        for plane_a, plane_b in zip(a, b):
            total += float(np.dot(plane_a.reshape(-1), plane_b.reshape(-1)))
        return total


class _CupyBackend:
    """cupy.fft / cupyx.scipy.fft on the current GPU; the transforms of :class:`_NumpyBackend`."""

    name = "cupy"

    def __init__(self, cupy, mirror_z=False):
        self.xp = cupy
        self.mirror_z = mirror_z

    def _dct1_z(self, a):
        # DCT-I along z as the real FFT of the whole-sample mirror extension (x0 .. x_{n-1} .. x1),
        # normalised like scipy's; cupyx.scipy.fft.dct has no type 1 in every cupy release.
        n = a.shape[0]
        if n == 1:
            return a
        extended = self.xp.concatenate([a, a[-2:0:-1]], axis=0)
        return self.xp.fft.rfft(extended, axis=0).real[:n].astype(a.dtype, copy=False)

    def forward(self, a, overwrite=False):
        if self.mirror_z:
            return self.xp.fft.rfftn(self._dct1_z(a), axes=(1, 2))
        return self.xp.fft.rfftn(a)

    def forward_yx(self, a):
        return self.xp.fft.rfftn(a, axes=(1, 2))

    def inverse(self, a, shape):
        if self.mirror_z:
            n = shape[0]
            planes = self.xp.fft.irfftn(a, s=shape[1:], axes=(1, 2))
            return planes if n == 1 else self._dct1_z(planes) / (2 * (n - 1))
        return self.xp.fft.irfftn(a, s=shape)

    def to_device(self, a):
        return self.xp.asarray(a)

    def to_host(self, a):
        return self.xp.asnumpy(a)

    def sumsq(self, a):
        return self.dot(a, a)

    def dot(self, a, b):
        return float(self.xp.vdot(a.reshape(-1), b.reshape(-1)))


def _gpu_cupy():
    """cupy if it imports and sees a CUDA device, else None."""
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() > 0:
            return cupy
    except Exception:  # noqa: BLE001 - no cupy, no driver, no device: all mean "no GPU"
        pass
    return None


def _backend(xp, workers, mirror_z=False):
    name = getattr(xp, "__name__", xp)
    if xp is None or name == "numpy":
        return _NumpyBackend(workers, mirror_z)
    if name == "auto":
        cupy = _gpu_cupy()
        return _CupyBackend(cupy, mirror_z) if cupy is not None else _NumpyBackend(workers, mirror_z)
    if name == "cupy":
        if isinstance(xp, str):
            try:
                import cupy as xp
            except ImportError as err:
                raise InputError(f"xp='cupy' but cupy cannot be imported ({err}); use xp=None or 'auto'") from None
        return _CupyBackend(xp, mirror_z)
    raise InputError(f"xp={xp!r} must be None, 'numpy', 'cupy', 'auto' or the numpy/cupy module")


# the algorithm -----------------------------------------------------------------------------------
def _otf(psf, fft_shape, backend):
    """OTF and its conjugate in the backend's block transform, PSF centre at index 0 (complex64).

    Padded z: rfftn of the PSF zero-padded to ``fft_shape``. Mirror z: per cosine frequency ``k``
    of the ``nz`` planes, ``sum_m psf[m] cos(pi k m / (nz - 1))`` (m from the centre plane), then rfftn
    in y/x; it is real in z because the PSF is even there, so the conjugate is still the
    correlation's transfer function.
    """
    if backend.mirror_z:
        nz = fft_shape[0]
        offsets = np.arange(psf.shape[0], dtype=np.float64) - psf.shape[0] // 2
        cosines = np.cos(np.pi * np.arange(nz, dtype=np.float64)[:, None] * offsets[None, :] / max(nz - 1, 1))
        planes = (cosines @ psf.reshape(psf.shape[0], -1).astype(np.float64)).reshape(nz, *psf.shape[1:])
    else:
        planes = psf
    kernel = np.zeros(fft_shape, dtype=np.float32)
    kernel[tuple(slice(0, n) for n in planes.shape)] = planes
    roll_axes = (1, 2) if backend.mirror_z else (0, 1, 2)
    kernel = np.roll(kernel, [-(planes.shape[a] // 2) for a in roll_axes], axis=roll_axes)
    device_kernel = backend.to_device(kernel)
    otf = backend.forward_yx(device_kernel) if backend.mirror_z else backend.forward(device_kernel, overwrite=True)
    return otf, backend.xp.conjugate(otf)


def _rl_factor(est, data, otfs, eps, backend, flat=None):
    """The multiplicative Richardson–Lucy update at ``est``: ``correlate(d / max(convolve(est, h), eps), h)``.

    ``flat``: ``est`` is this constant everywhere (the first iteration). A unit-sum kernel maps a
    constant onto itself (the block's periodic or mirror continuation of a constant is constant), so the
    first transform pair is skipped: one iteration in ``n_iter`` costs half.
    """
    xp = backend.xp
    otf, back_otf = otfs
    shape = est.shape
    if flat is None:
        spec = backend.forward(est)
        spec *= otf
        blurred = backend.inverse(spec, shape)                 # u * h
        del spec
        xp.maximum(blurred, eps, out=blurred)
        xp.divide(data, blurred, out=blurred)                 # ratio d / (u * h)
    else:
        blurred = xp.divide(data, np.float32(max(flat, eps)))
    spec = backend.forward(blurred, overwrite=True)
    del blurred
    spec *= back_otf                                          # back projection: correlation with h if matched
    return backend.inverse(spec, shape)


def _rl_block(data, otfs, init, eps, n_iter, tol, backend, clip_each=False):
    """Richardson–Lucy on one padded block (on the backend's device); returns (estimate, iters, change).

    With the matched back projector the correction factor (correlation of the non-negative ratio with
    the non-negative PSF) is >= 0 up to FFT round-off, so the estimate is clipped at 0 once at the end;
    ``clip_each`` (an unmatched back projector with negative lobes) clips it after every iteration.
    """
    xp = backend.xp
    est = xp.full(data.shape, init, dtype=xp.float32)
    change, k = float("nan"), 0
    while k < n_iter:
        k += 1
        corr = _rl_factor(est, data, otfs, eps, backend, flat=init if k == 1 else None)
        if tol is None:
            est *= corr
            del corr
            if clip_each:
                xp.maximum(est, 0, out=est)
            continue
        norm_prev = backend.sumsq(est)
        corr -= 1                                             # u_{k+1} - u_k = u_k * (c - 1)
        corr *= est
        change = math.sqrt(backend.sumsq(corr) / norm_prev) if norm_prev > 0 else 0.0
        est += corr
        del corr
        if clip_each:
            xp.maximum(est, 0, out=est)
        if change < tol:
            break
    xp.maximum(est, 0, out=est)
    return est, k, change


def _rl_block_accelerated(data, otfs, init, eps, n_iter, tol, backend, clip_each=False):
    """Richardson–Lucy with Biggs–Andrews vector extrapolation on one padded block; as :func:`_rl_block`.

    Each iteration applies the update at a point predicted along the last step,
    ``y_k = x_k + a_k (x_k - x_{k-1})`` (clipped at 0), so ``x_{k+1} = y_k * factor(y_k)``; the step
    ``g_k = x_{k+1} - y_k`` gives ``a_{k+1} = <g_k, g_{k-1}> / <g_{k-1}, g_{k-1}>`` in [0, ALPHA_MAX]
    (Biggs & Andrews 1997, Appl. Opt. 36:1766). The first two iterations are plain Richardson–Lucy.
    """
    xp = backend.xp
    est = xp.full(data.shape, init, dtype=xp.float32)
    prev = step_prev = None                                   # x_{k-1}, g_{k-1}
    alpha, step_prev_norm, change, k = 0.0, 0.0, float("nan"), 0
    while k < n_iter:
        k += 1
        if prev is None:
            point = est.copy()
        else:                                                 # y_k, in the buffer of x_{k-1}
            point = xp.subtract(est, prev, out=prev)
            point *= np.float32(alpha)
            point += est
            xp.maximum(point, 0, out=point)
        new = _rl_factor(point, data, otfs, eps, backend, flat=init if k == 1 else None)
        new *= point                                          # x_{k+1} = y_k * factor(y_k)
        if clip_each:
            xp.maximum(new, 0, out=new)
        step = xp.subtract(new, point, out=point)             # g_k = x_{k+1} - y_k
        step_norm = backend.sumsq(step)
        if step_prev is not None and step_prev_norm > 0:
            alpha = min(max(backend.dot(step, step_prev) / step_prev_norm, 0.0), ALPHA_MAX)
        if tol is not None:
            norm_prev = backend.sumsq(est)
            diff = xp.subtract(new, est, out=step_prev) if step_prev is not None else new - est
            change = math.sqrt(backend.sumsq(diff) / norm_prev) if norm_prev > 0 else 0.0
            del diff
        prev, est, step_prev, step_prev_norm = est, new, step, step_norm
        del new, step, point
        if tol is not None and change < tol:
            break
    xp.maximum(est, 0, out=est)
    return est, k, change


def richardson_lucy(image, psf, n_iter=50, *, stop_tolerance=None, acceleration=None, back_projector="matched",
                    tile_yx=None, overlap_yx=None, xp=None, progress=None, pad_mode="reflect", z_boundary="auto",
                    workers=None, return_info=False):
    """3D Richardson–Lucy deconvolution of a (z, y, x) image, optionally tiled in y/x.

    Parameters
    ----------
    image : ndarray, shape (z, y, x)
        Non-negative, finite intensities (photoelectrons, or ADU with the
        camera offset removed); any integer or floating dtype. Not modified.
    psf : ndarray, shape (pz, py, px)
        Centred PSF with an odd size in every axis, on the image's voxel grid
        (see :func:`check_psf_matches`); normalised to unit sum here. Its
        half-size must not exceed ``image.shape - 1`` in any axis.
    n_iter : int
        Iterations (the cap when ``stop_tolerance`` is given), >= 1. On
        simulated spots (NA 1.3, 0.108 µm pixels) 30 iterations shrink the
        lateral FWHM by ~27 %, 50 by ~34 %, 100 by ~40 %.
    stop_tolerance : float, optional
        Stop a block once the relative L2 change of its estimate between two
        iterations, ``||u_k - u_{k-1}||_2 / ||u_{k-1}||_2``, is below this
        (e.g. ``1e-2``: about 35 iterations on the simulated spots; the
        change decays slowly, ~0.7 % at 50 and ~0.2 % at 200 iterations).
        None (default) runs exactly ``n_iter`` iterations.
    acceleration : {None, "biggs_andrews"}
        None: plain Richardson–Lucy. ``"biggs_andrews"``: each update is
        applied at a point extrapolated along the previous step (Biggs &
        Andrews 1997), which reaches a given sharpness in fewer iterations
        (benchmarks/RESULTS.md) at the cost of two more float32 block
        buffers.
    back_projector : {"matched", "wiener_butterworth"}
        What the ratio ``data / (estimate * psf)`` is convolved with in
        each update. ``"matched"`` (default): the flipped PSF, i.e. classic
        Richardson–Lucy. ``"wiener_butterworth"``: the unmatched back
        projector of :func:`wiener_butterworth_kernel` (Guo et al. 2020),
        which restores in 1-3 iterations about what the matched one does
        in 20 accelerated ones; the estimate is then clipped at 0 after
        every iteration (the kernel has negative lobes).
    tile_yx : int or (int, int), optional
        Process y/x blocks whose cores are at most this large (the whole z
        extent each); None (default) processes the image as one block.
    overlap_yx : int or (int, int), optional
        Margin added to each side of a core; neighbouring blocks are blended
        with a raised-cosine ramp over an ``overlap_yx``-wide band centred on
        their common boundary. Default :func:`default_overlap_yx` (twice the
        PSF's lateral half-size). Only used with ``tile_yx``; cores must be at
        least this large (``tile_yx >= 2 * overlap_yx`` guarantees it).
    xp : None, "numpy", "cupy", "auto" or the numpy/cupy module
        Array backend. None/"numpy": CPU with scipy.fft (default). "cupy":
        cupy.fft on the current GPU (cupy is imported only then). "auto":
        cupy when it imports and sees a CUDA device, else the CPU.
    progress : callable, optional
        Called with a one-line str after every block.
    pad_mode : {"reflect", "edge"}
        How blocks are extended beyond the image border (numpy.pad modes);
        in z only with ``z_boundary="pad"``.
    z_boundary : {"auto", "mirror", "pad"}
        ``"mirror"``: the stack is continued by its mirror image about its
        outer planes and z is transformed by a DCT without padding (about half the work of a thin
        stack; the PSF must be even in z, :func:`psf_is_even_in_z`).
        ``"pad"``: padded by the PSF half-size with ``pad_mode`` and FFT.
        ``"auto"`` (default): ``"mirror"`` when the PSF allows it.
    workers : int, optional
        scipy.fft threads; default the CPUs this process may use.
    return_info : bool
        Also return a :class:`RichardsonLucyInfo` (iterations per block).

    Returns
    -------
    out : ndarray of float32, shape ``image.shape``
        Non-negative estimate of the unblurred intensities (same total flux
        as the image, up to boundary effects).
    info : RichardsonLucyInfo
        Only with ``return_info=True``.

    Raises
    ------
    InputError
        Non-3D, even-sized, negative or non-finite PSF; a PSF larger than the
        image allows (see ``psf``); negative, NaN or infinite image values;
        ``z_boundary="mirror"`` with a PSF that is not even in z;
        ``n_iter < 1``; a non-positive ``stop_tolerance``; bad tiling
        parameters, ``pad_mode`` or ``xp``.

    Notes
    -----
    Peak memory is the input, the float32 output and one block's FFT
    buffers: :func:`richardson_lucy_peak_bytes`. The result is deterministic
    for a given input, parameters, backend and ``workers``.

    Examples
    --------
    >>> from merfishflow.image.psf import widefield_psf
    >>> psf = widefield_psf((0.31, 0.108, 0.108), 0.59, 1.3, 1.4)
    >>> out = richardson_lucy(image, psf, 50, tile_yx=512)            # doctest: +SKIP
    """
    n_iter, stop_tolerance, workers = _check_options(n_iter, stop_tolerance, acceleration, back_projector,
                                                     pad_mode, workers)
    image = np.asarray(image)
    psf = _check_psf(psf)
    z_boundary = _resolve_z_boundary(z_boundary, psf)
    mirror_z = z_boundary == "mirror"
    mean = _scan_image(image)
    zblock, yblocks, xblocks, fft_shape = _plan(image.shape, psf.shape, tile_yx, overlap_yx, mirror_z)
    backend = _backend(xp, workers, mirror_z)

    out = np.zeros(image.shape, dtype=np.float32)
    iterations = np.zeros((len(yblocks), len(xblocks)), dtype=np.int64)
    final_change = np.full(iterations.shape, np.nan)
    if mean > 0:
        eps = np.float32(max(EPS_RELATIVE * mean, np.finfo(np.float32).tiny))
        init = np.float32(mean)
        otfs = _otf(psf, fft_shape, backend)
        unmatched = back_projector == "wiener_butterworth"
        if unmatched:
            otfs = (otfs[0], _otf(wiener_butterworth_kernel(psf), fft_shape, backend)[0])
        run_block = functools.partial(_rl_block if acceleration is None else _rl_block_accelerated,
                                      clip_each=unmatched)
        n_blocks = iterations.size
        # The mirror z transform is a BLAS product: held to the FFT's workers, so a one-thread job stays one.
        with blas_threads(workers if backend.name == "numpy" else 0):
            for iy, yb in enumerate(yblocks):
                for ix, xb in enumerate(xblocks):
                    data = _padded_block(image, zblock, yb, xb, pad_mode)
                    est, its, change = run_block(backend.to_device(data), otfs, init, eps, n_iter, stop_tolerance,
                                                 backend)
                    del data
                    iterations[iy, ix], final_change[iy, ix] = its, change
                    _blend(out, backend.to_host(est), zblock, yb, xb)
                    del est
                    if progress is not None:
                        progress(f"richardson_lucy: block {iy * len(xblocks) + ix + 1}/{n_blocks} "
                                 f"({its} iterations)")
    if return_info:
        return out, RichardsonLucyInfo(iterations, final_change, tuple(fft_shape), backend.name, z_boundary)
    return out


def _check_options(n_iter, stop_tolerance, acceleration, back_projector, pad_mode, workers):
    """Validated ``(n_iter, stop_tolerance, workers)`` of :func:`richardson_lucy`."""
    if isinstance(n_iter, bool) or not isinstance(n_iter, (int, np.integer)) or n_iter < 1:
        raise InputError(f"n_iter={n_iter!r} must be an integer >= 1")
    if stop_tolerance is not None:
        try:
            stop_tolerance = float(stop_tolerance)
        except (TypeError, ValueError):
            raise InputError(f"stop_tolerance={stop_tolerance!r} must be a positive number or None") from None
        if not (math.isfinite(stop_tolerance) and stop_tolerance > 0):
            raise InputError(f"stop_tolerance={stop_tolerance!r} must be a positive number or None")
    if acceleration not in ACCELERATIONS:
        raise InputError(f"acceleration={acceleration!r} must be one of {ACCELERATIONS}")
    if back_projector not in BACK_PROJECTORS:
        raise InputError(f"back_projector={back_projector!r} must be one of {BACK_PROJECTORS}")
    if pad_mode not in PAD_MODES:
        raise InputError(f"pad_mode={pad_mode!r} must be one of {PAD_MODES}")
    if workers is None:
        workers = available_cpus()
    elif isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise InputError(f"workers={workers!r} must be an integer >= 1")
    return int(n_iter), stop_tolerance, int(workers)


def _padded_block(image, zb, yb, xb, mode):
    """The image over the block's range, as float32, extended beyond the image with ``mode``."""
    sl, pads = [], []
    for b, n in zip((zb, yb, xb), image.shape):
        lo, hi = max(b.start, 0), min(b.stop, n)
        sl.append(slice(lo, hi))
        pads.append((lo - b.start, b.stop - hi))
    block = image[tuple(sl)]
    if any(p != (0, 0) for p in pads):
        block = np.pad(block, pads, mode=mode)
    return np.ascontiguousarray(block, dtype=np.float32)


def _blend(out, est, zb, yb, xb):
    """Add the block's weighted contributing region to ``out`` (in place; ``est`` is overwritten)."""
    region = tuple(slice(b.out_start - b.start, b.out_stop - b.start) for b in (zb, yb, xb))
    part = est[region]
    part *= yb.weights[None, :, None]
    part *= xb.weights[None, None, :]
    out[:, yb.out_start:yb.out_stop, xb.out_start:xb.out_stop] += part

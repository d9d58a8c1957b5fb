"""MERFISH pixel decoding of one tile, in z-slabs, as in MERlin / merfish3d.

Pure functions in the style of scikit-image: arrays in, a table out, no file
I/O and nothing Snakemake-specific. The single entry point is
:func:`decode_tile`; the registered bit images come through a callable
``read_bits(z0, z1, window=None) -> float32 (n_bits, z1 - z0, Y, X)`` so that the caller
can stream them from the datastore (tensorstore) and a 100 x 2048 x 2048
tile with 16 bits is never held whole.

Algorithm
---------
1. **Spot enhancement** (per bit, :func:`enhance_bits`): a difference of
   Gaussians. The image is low-passed with a 3D Gaussian of
   ``lowpass_sigma_zyx_um`` (default 0.31 x 0.108 x 0.108 µm = 1 voxel at the
   default voxel size: about the width of a deconvolved spot, it averages the
   Poisson noise of the voxels of one spot), then a 2D (per plane) Gaussian of
   ``background_sigma_yx_um`` (0.6 µm = 5.6 pixels, several times a spot's
   width) of the low-passed image is subtracted as the local background, and
   the result is clipped at 0. Sigmas are in µm and converted to voxels with
   the anisotropic voxel size, so a coarse z step (1 µm) simply smooths less
   in z. DoG rather than LoG: it is separable (five 1D passes, no second
   derivatives), it does not ring around bright spots, and its output is in
   photoelectrons, so the per-bit intensities of a spot stay meaningful. The
   background is 2D so that the z halo a slab needs is only the low-pass's
   (``ceil(truncate * sigma_z)`` planes, 3 at the defaults). The background
   is smooth, so it is computed on ``background_downsample`` x
   ``background_downsample`` (4 x 4) block means and interpolated back
   linearly, with the Gaussian's sigma reduced so that the chain has the
   requested variance (:func:`merfishflow.image.kernels.block_sigma`; within
   5 % of the exact Gaussian's spread inside the tile, 25 % at its border): a
   sixteenth of the work of the 2 x 35-tap exact filter. The z Gaussian is a
   product with a banded matrix (BLAS sgemm, :func:`_apply_axis0`) over the
   slab's planes; the y and x Gaussians, the block means, the background's
   interpolation back to the pixels and the subtraction run plane by plane
   in one compiled kernel (numba, :class:`merfishflow.image.kernels.PlaneDoG`)
   that works row by row while the rows are in the CPU cache, 2.5x faster
   than the same steps as numpy/BLAS passes. Both equal scipy.ndimage's
   filters up to float32 rounding (tested). The bits are filtered in
   ``n_threads`` threads (0 = the CPUs this process may use; the kernels
   and BLAS release the GIL; one BLAS thread each), each into its own
   buffers, so the result does not depend on the thread count (nor on the
   BLAS thread count or the slab size: tested).
2. **Per-bit normalization**: every bit ``b`` is mapped to
   ``x_b = max(0, (e_b - background_b) / scale_b)``. Initial (global)
   estimate: ``background_b = 0`` (the DoG has removed it) and ``scale_b`` =
   the median of the enhanced voxels above ``init_snr`` noise SDs (the noise
   SD from the median of the positive voxels, half-normal), both medians over
   a regular subsample of at most 2^20 voxels per bit. Refinement
   (``n_iterations`` at most): decode, then for every bit ``scale_b`` =
   median over decoded spots whose codeword has bit ``b`` on of the spot's
   enhanced intensity in ``b`` at its brightest voxel, minus ``background_b``,
   and ``background_b`` = the same median over spots whose codeword has ``b``
   off; stop when no scale moves by more than ``convergence_tol`` (relative).
   The brightest voxel, not the mean over the spot, because the mean depends on
   how far the spot extends above the magnitude threshold, which depends on
   the scale: that feedback let noise pull the scales down. A bit with fewer
   than ``min_spots_per_bit`` spots keeps its previous value. The
   refinement runs on a central y/x crop of at most ``refine_max_voxels``
   (2^22) voxels, every plane. A tile of at most ``whole_tile_max_voxels``
   (2^24) is read in one piece and filtered in place (no slabs, no copy); the
   crop is a view of it, and the final decode uses it too: one filter pass
   in all. A larger tile's crop is read as a y/x window grown by the
   filters' reach (:func:`_filter_halo_yx`, 28 pixels at the defaults, so its
   enhanced values are the whole tile's: tested) and filtered alone, then
   the tile is decoded slab by slab: 1 + (crop + halo) / tile filter passes.
3. **Pixel decoding**: the magnitude ``|x|`` (L2) of every voxel; voxels with
   ``|x| >= magnitude_threshold`` are L2-normalized and multiplied (BLAS
   sgemm, in chunks of ``chunk_pixels``) by the L2-normalized codewords; the
   nearest codeword is the largest dot product ``c`` and the Euclidean
   distance is ``sqrt(2 - 2 c)``. A voxel is decoded when that distance is at
   most ``distance_threshold``. The default magnitude threshold 0.8 (a voxel
   whose on-bits reach ~40 % of a typical spot peak) was chosen on simulated
   tiles (docs/simulator.md defaults, seeds 1 and 2), as was ``min_area`` 5.
   Faint molecules (peak magnitude 0.85-1.0) have only 2-4 voxels above the
   magnitude threshold, and noise blobs are that small too, but on simulated
   tiles the small spots that were real molecules matched their codeword
   better (mean distance 0.28-0.45) than the noise ones (0.58-0.64): so a spot
   of ``min_area_confident`` (4) to ``min_area - 1`` voxels is kept when its
   mean distance is at most ``confident_distance`` (0.5, just below the 0.518
   of an ideal trace with one dropped bit: a small spot must look like a
   complete codeword). Chosen on seeds 1-4, checked on seeds 5-7, the demo and
   a 1 µm z step, and on pure-noise tiles (no more noise spots than
   ``min_area`` 5 alone); benchmarks/RESULTS.md. The
   distance 0.65 admits a spot with one
   dropped bit of a weight-4 code (ideal distance ``sqrt(2 - sqrt(3)) =
   0.518``) with room for noise, and is still far below the distance from such
   a trace to any other codeword of a distance-4 code (>= 0.92).
4. **Spots** (``segmentation``): every decoded voxel points to its brightest
   neighbour (26-connected by default, ``connectivity``) among the voxels
   decoded to the same barcode, itself included; a spot is the set of voxels
   that climb to the same local maximum, so two touching molecules of one
   gene with separate maxima are two spots (``"components"``: plain connected
   components of same-barcode voxels, as MERlin). "Brightest" is by the
   magnitude sharpened with its scale-normalized Laplacian
   (``peak_sharpening``; from the 6 face neighbours every decoded voxel
   carries, with the spots' per-axis variance measured from the 3-point log
   curvature at magnitude maxima), so a fainter molecule on the flank of a
   brighter one of the same gene, a shoulder without a maximum of its own,
   gets its own peak. Against noise peaks, a peak less than
   ``min_peak_separation`` spot SDs (per axis, so about 0.32 µm laterally and
   0.9 µm in z at the defaults) from a higher peak of the same barcode joins
   that peak's spot. Spots with ``min_area <= voxels <= max_area`` (or the confident small ones, step 3) are kept; per spot
   the magnitude-weighted centroid (z, y, x, sub-voxel), the mean distance,
   mean magnitude, area and the mean enhanced intensity of every
   bit (``intensity_bit001``...). Along an axis where the spot's brightest
   voxel lies on the tile's first or last index, the centroid (pulled inwards
   by the cut) is replaced by the centre of a Gaussian through the peak and its
   inner neighbour, whose width is measured on the spots' three-point profiles
   (``edge_correction``); spots whose position then lies outside the tile
   (``-0.5 <= p < shape - 0.5``) are molecules of the neighbouring volume and
   are dropped (``drop_outside_frame``).
5. **Slabs**: the tile is decoded in slabs of ``slab_planes`` planes, each
   read with the low-pass's z halo, so every voxel's filtered values, and
   hence its barcode, distance and magnitude, equal those of whole-volume
   processing. Only the decoded voxels are kept (a sparse set: flat index,
   barcode, distance, magnitude, the n_bits enhanced values and the magnitudes
   of its 6 face neighbours, taken from the neighbouring slab across a slab
   boundary), and the spots are formed from that set once all slabs are done:
   a spot straddling a slab boundary is neither split nor duplicated, and the
   result does not depend on ``slab_planes``.

Memory
------
A tile of at most ``whole_tile_max_voxels`` voxels: ``4 * n_bits * Z * Y *
X`` bytes (``read_bits``' array, filtered in place). A larger one: ``4 *
n_bits * (slab_planes + 2 * halo) * Y * X`` bytes for the slab and ``4 *
n_bits * refine_max_voxels`` bytes of refinement crop; the slab's buffer is
reused from slab to slab. Both: a single-bit slab buffer and about 1.3
planes of scratch per filter thread, and ``~4 * n_bits + 40`` bytes per decoded voxel
(about 1 % of the voxels in dense tissue). Measured: see benchmarks/RESULTS.md
("Pixel decoding").
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from ..cpus import available_cpus
from ..errors import InputError
from ..image.kernels import PlaneDoG, block_sigma, gaussian_weights, trace_magnitudes

__all__ = ["DecodeResult", "DecodingParams", "array_reader", "decode_tile", "enhance_bits", "spot_columns"]

# Columns of the spot sums carried between slabs (float64), then the per-bit intensity sums.
_AREA, _SW, _SWZ, _SWY, _SWX, _SD, _NFIX = 0, 1, 2, 3, 4, 5, 6


@dataclass(frozen=True)
class DecodingParams:
    """Every tunable of :func:`decode_tile` (config key ``decoding``).

    Attributes
    ----------
    lowpass_sigma_zyx_um : tuple of 3 float
        3D Gaussian low-pass (µm).
    background_sigma_yx_um : float
        2D Gaussian of the local background subtracted per plane (µm; 0 = none).
    truncate : float
        Gaussian kernels are cut at this many sigmas; the z halo of a slab is
        ``ceil(truncate * sigma_z / dz)`` planes.
    distance_threshold : float
        Largest Euclidean distance between a normalized pixel trace and its
        normalized codeword (0..sqrt(2)).
    magnitude_threshold : float
        Smallest L2 norm of the normalized pixel trace (units: a typical spot's
        mean intensity in an "on" bit is 1, so an ideal 4-bit spot is ~2).
    min_area, max_area : int
        Allowed voxels per spot.
    min_area_confident : int
        Smaller spots, down to this many voxels, are kept if their mean distance is at most
        ``confident_distance`` (``>= min_area``: no such exception).
    confident_distance : float
        See ``min_area_confident``.
    connectivity : int
        Neighbours of a voxel in the spot segmentation: 1 (6 faces), 2 (18) or 3 (all 26).
    segmentation : str
        ``"peaks"`` (voxels that climb to the same local maximum) or ``"components"``
        (connected components of same-barcode voxels).
    peak_sharpening : float
        ``"peaks"``: weight of the scale-normalized Laplacian subtracted from the magnitude before the
        climb (0 = climb on the magnitude itself).
    min_peak_separation : float
        ``"peaks"`` with sharpening: a peak closer than this many spot SDs (per axis) to a higher peak of
        the same barcode joins its spot (0 = never).
    n_iterations : int
        Maximum refinement iterations of the normalization (0 = initial estimate only).
    convergence_tol : float
        Refinement stops once no per-bit scale changes by more than this (relative).
    min_spots_per_bit : int
        A bit's scale (background) is refined only from at least this many spots with it on (off).
    init_snr : float
        Initial scale: median of the enhanced voxels above this many noise SDs.
    refine_max_voxels : int
        Voxels (all planes x a central y/x crop) used for the refinement.
    whole_tile_max_voxels : int
        A tile of at most this many voxels is read and filtered once, kept whole in memory (``4 n_bits``
        bytes per voxel) and both refined and decoded from there; a larger one is read twice: the
        refinement crop (with its filters' y/x halo), then slab by slab.
    background_downsample : int
        The background Gaussian is computed on blocks of this many pixels squared (1 = exact).
    n_threads : int
        Bits filtered in parallel (0 = every CPU available to the process, at most n_bits); also the BLAS
        threads while decoding (0: BLAS's default), so that 1 is single-threaded throughout.
    slab_planes : int
        Planes decoded per slab.
    chunk_pixels : int
        Pixels per matrix product.
    edge_correction : bool
        Gaussian position of spots whose peak is on the tile border (see the module docstring).
    drop_outside_frame : bool
        Drop spots positioned outside the tile.
    """

    lowpass_sigma_zyx_um: tuple = (0.31, 0.108, 0.108)
    background_sigma_yx_um: float = 0.6
    truncate: float = 3.0
    distance_threshold: float = 0.65
    magnitude_threshold: float = 0.8
    min_area: int = 5
    min_area_confident: int = 4
    confident_distance: float = 0.5
    max_area: int = 2000
    connectivity: int = 3
    segmentation: str = "peaks"
    peak_sharpening: float = 1.0
    min_peak_separation: float = 2.0
    n_iterations: int = 10
    convergence_tol: float = 0.02
    min_spots_per_bit: int = 10
    init_snr: float = 8.0
    refine_max_voxels: int = 2**22
    whole_tile_max_voxels: int = 2**24
    background_downsample: int = 4
    n_threads: int = 0
    slab_planes: int = 8
    chunk_pixels: int = 2**16
    edge_correction: bool = True
    drop_outside_frame: bool = True

    def __post_init__(self):
        sig = tuple(float(v) for v in self.lowpass_sigma_zyx_um)
        object.__setattr__(self, "lowpass_sigma_zyx_um", sig)

        def need(ok, name, expected):
            if not ok:
                raise InputError(f"decoding parameter {name}={getattr(self, name)!r}: expected {expected}")

        need(len(sig) == 3 and all(math.isfinite(v) and v >= 0 for v in sig), "lowpass_sigma_zyx_um",
             "three floats >= 0")
        need(self.background_sigma_yx_um >= 0, "background_sigma_yx_um", "a float >= 0")
        need(self.truncate > 0, "truncate", "a float > 0")
        need(0 < self.distance_threshold <= math.sqrt(2), "distance_threshold", "a float in (0, sqrt(2)]")
        need(self.magnitude_threshold >= 0, "magnitude_threshold", "a float >= 0")
        need(1 <= self.min_area <= self.max_area, "min_area", "1 <= min_area <= max_area")
        need(1 <= self.min_area_confident, "min_area_confident", "an integer >= 1")
        need(0 <= self.confident_distance <= math.sqrt(2), "confident_distance", "a float in [0, sqrt(2)]")
        need(self.connectivity in (1, 2, 3), "connectivity", "1, 2 or 3")
        need(self.segmentation in ("peaks", "components"), "segmentation", "'peaks' or 'components'")
        need(self.peak_sharpening >= 0, "peak_sharpening", "a float >= 0")
        need(self.min_peak_separation >= 0, "min_peak_separation", "a float >= 0")
        need(self.n_iterations >= 0, "n_iterations", "an integer >= 0")
        need(self.convergence_tol > 0, "convergence_tol", "a float > 0")
        need(self.min_spots_per_bit >= 1, "min_spots_per_bit", "an integer >= 1")
        need(self.init_snr > 0, "init_snr", "a float > 0")
        need(self.refine_max_voxels >= 1, "refine_max_voxels", "an integer >= 1")
        need(self.whole_tile_max_voxels >= 0, "whole_tile_max_voxels", "an integer >= 0")
        need(self.background_downsample >= 1, "background_downsample", "an integer >= 1")
        need(self.n_threads >= 0, "n_threads", "an integer >= 0")
        need(self.slab_planes >= 1, "slab_planes", "an integer >= 1")
        need(self.chunk_pixels >= 1, "chunk_pixels", "an integer >= 1")

    def to_dict(self) -> dict:
        """JSON-able dict (tuples become lists); ``DecodingParams(**d)`` re-creates it.

        ``n_threads`` is left out: it does not change the result, and what is recorded with an output must
        not depend on the machine (a run is byte-identical locally and on a cluster).
        """
        d = asdict(self)
        del d["n_threads"]
        d["lowpass_sigma_zyx_um"] = list(self.lowpass_sigma_zyx_um)
        return d


@dataclass
class DecodeResult:
    """What :func:`decode_tile` found and the normalization it used.

    Attributes
    ----------
    spots : DataFrame
        One row per spot, columns :func:`spot_columns`: ``barcode_id`` (int32,
        row of the codebook), ``z_px``, ``y_px``, ``x_px`` (float64, tile
        voxels, pixel centres at integers), ``distance``, ``magnitude``
        (float32), ``area`` (int32 voxels), ``intensity_bitNNN`` (float32, mean
        enhanced photoelectrons). Sorted by z, y, x, barcode_id.
    scale, background : ndarray of float64 (n_bits,)
        The normalization of the final decode.
    distance_threshold, magnitude_threshold : float
    history : list of dict
        One entry per normalization estimate (the initial one first): ``scale``,
        ``background`` (lists), ``n_spots`` decoded with it on the refinement
        crop (None for the last if not decoded there), ``max_rel_change``.
    converged : bool
    n_rejected_area : int
        Components removed by the area filter or (``drop_outside_frame``) for lying outside the tile.
    sigma_px : dict
        The filter sigmas in voxels and the z halo.
    """

    spots: pd.DataFrame
    scale: np.ndarray
    background: np.ndarray
    distance_threshold: float
    magnitude_threshold: float
    history: list = field(default_factory=list)
    converged: bool = False
    n_rejected_area: int = 0
    sigma_px: dict = field(default_factory=dict)


def spot_columns(n_bits: int) -> list[str]:
    """Column names of :attr:`DecodeResult.spots` for ``n_bits`` bits."""
    return (["barcode_id", "z_px", "y_px", "x_px", "distance", "magnitude", "area"]
            + [f"intensity_bit{b:03d}" for b in range(1, n_bits + 1)])


# filters ---------------------------------------------------------------------------------------
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


def _blas_threads(n_threads: int):
    """BLAS limited to ``n_threads`` threads while decoding (0: left as it is), so that ``n_threads=1`` is
    single-threaded throughout (OpenBLAS's threads on a busy core slow every small product down)."""
    from contextlib import nullcontext

    if n_threads <= 0:
        return nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        return nullcontext()
    return threadpool_limits(n_threads, user_api="blas")


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
        with _blas_threads(1), ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(run, range(workers)))
    else:
        run(0)
    a, b = z_core
    return stack[:, a:b]


# normalization ---------------------------------------------------------------------------------
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


# slab decoding ---------------------------------------------------------------------------------
class _VoxelCollector:
    """Decodes consecutive slabs and keeps every decoded voxel (a sparse set) for the spot segmentation."""

    def __init__(self, codewords, scale, background, params: DecodingParams, shape_yx):
        self.params = params
        cw = codewords.astype(np.float32)
        norms = np.linalg.norm(cw, axis=1, keepdims=True)
        self.cw_unit = (cw / np.where(norms > 0, norms, 1)).T.copy()  # (B, C)
        self.n_bits = cw.shape[1]
        self.scale = np.asarray(scale, np.float32)
        self.background = np.asarray(background, np.float32)
        self.shape_yx = shape_yx
        self.n_threads = _n_threads(params, self.n_bits)
        self.prev_mag = None
        self.chunks = []

    def _decode_pixels(self, enh):
        """Per decoded voxel of the slab: flat index, barcode, distance, magnitude, enhanced trace; magnitude map.

        ``enh`` (n_bits, nz, Y, X) may be a strided view (the refinement crop of a tile held whole): it is
        read in blocks of rows, never copied whole.
        """
        B, nz, Y, X = enh.shape
        magmap = np.empty((nz, Y, X), np.float32)
        inv2 = (1.0 / self.scale.astype(np.float64) ** 2).astype(np.float32)
        trace_magnitudes(enh, self.background, inv2, magmap, self.n_threads)
        thr = np.float32(self.params.magnitude_threshold)
        flat_mag = magmap.ravel()
        cand = np.flatnonzero(flat_mag >= thr) if thr > 0 else np.flatnonzero(flat_mag > 0)
        out = {"idx": [], "code": [], "dist": [], "mag": [], "trace": []}
        dthr = self.params.distance_threshold
        step = self.params.chunk_pixels
        inv_scale = (1.0 / self.scale).astype(np.float32)
        for s in range(0, cand.size, step):
            idx = cand[s:s + step]
            zc, rem = np.divmod(idx, Y * X)
            yc, xc = np.divmod(rem, X)
            raw = enh[:, zc, yc, xc].T  # (P, B) enhanced
            x = np.maximum((raw - self.background) * inv_scale, 0)
            mag = flat_mag[idx]
            x /= mag[:, None]
            dots = x @ self.cw_unit  # BLAS sgemm
            best = np.argmax(dots, axis=1)
            c = dots[np.arange(idx.size), best]
            dist = np.sqrt(np.maximum(2 - 2 * c, 0))
            ok = dist <= dthr
            out["idx"].append(idx[ok])
            out["code"].append(best[ok].astype(np.int32))
            out["dist"].append(dist[ok].astype(np.float32))
            out["mag"].append(mag[ok])
            out["trace"].append(raw[ok])
        if cand.size == 0:
            return magmap, np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32), \
                np.zeros(0, np.float32), np.zeros((0, B), np.float32)
        return (magmap, *(np.concatenate(out[k]) for k in ("idx", "code", "dist", "mag", "trace")))

    def add(self, enh, z0, last: bool):
        """Decode one slab ``enh`` (n_bits, nz, Y, X) of enhanced images whose first plane is ``z0``."""
        nz, Y, X = enh.shape[1:]
        magmap, idx, code, dist, mag, trace = self._decode_pixels(enh)
        # Voxels of the previous slab's last plane: their z+1 neighbour is this slab's first plane.
        if self.chunks:
            prev = self.chunks[-1]
            pend = np.flatnonzero(np.isinf(prev["nb"][:, 1]))
            if pend.size:
                prev["nb"][pend, 1] = magmap[0].ravel()[prev["gidx"][pend] % (Y * X)]
        z, rem = np.divmod(idx, Y * X)
        y, x = np.divmod(rem, X)
        # Magnitude of the 6 face neighbours (z-1, z+1, y-1, y+1, x-1, x+1); NaN beyond the tile.
        nb = np.full((idx.size, 6), np.nan, np.float32)
        inner = z > 0
        nb[inner, 0] = magmap[z[inner] - 1, y[inner], x[inner]]
        if z0 > 0:
            nb[~inner, 0] = self.prev_mag[y[~inner], x[~inner]]
        inner = z < nz - 1
        nb[inner, 1] = magmap[z[inner] + 1, y[inner], x[inner]]
        if not last:
            nb[~inner, 1] = np.inf  # pending: filled from the next slab
        for k, (coord, size, axis) in enumerate(((y, Y, 1), (x, X, 2))):
            for j, (ok, d) in enumerate(((coord > 0, -1), (coord < size - 1, 1))):
                where = [z[ok], y[ok], x[ok]]
                where[axis] = where[axis] + d
                nb[ok, 2 + 2 * k + j] = magmap[tuple(where)]
        self.chunks.append({"gidx": idx + z0 * Y * X, "code": code, "dist": dist, "mag": mag, "trace": trace,
                            "nb": nb})
        self.prev_mag = magmap[-1].copy()

    def voxels(self):
        if not self.chunks:
            B = self.n_bits
            return {"gidx": np.zeros(0, np.int64), "code": np.zeros(0, np.int32), "dist": np.zeros(0, np.float32),
                    "mag": np.zeros(0, np.float32), "trace": np.zeros((0, B), np.float32),
                    "nb": np.zeros((0, 6), np.float32)}
        return {k: np.concatenate([c[k] for c in self.chunks]) for k in self.chunks[0]}


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
def decode_tile(read_bits: Callable, shape_zyx, codewords, voxel_size_zyx_um, params: DecodingParams = DecodingParams(),
                progress: Callable | None = None) -> DecodeResult:
    """Decode the MERFISH spots of one tile.

    Parameters
    ----------
    read_bits : callable
        ``read_bits(z0, z1, window=None, out=None)`` returns the registered
        images of planes ``z0:z1`` of every bit, float32-convertible array
        ``(n_bits, z1 - z0, Y, X)``, bits in codebook-column order; with
        ``window = (y0, y1, x0, x1)`` only that y/x window, ``(n_bits, z1 -
        z0, y1 - y0, x1 - x0)`` (asked for only when the tile has more than
        ``whole_tile_max_voxels`` voxels). The decoder passes ``out``, a
        C-contiguous float32 array of that shape that it reuses from read to
        read, and filters the result in place: fill ``out`` and return it, or
        return a **new** array (never one the caller keeps).
        :func:`array_reader` makes one for an array in memory.
    shape_zyx : tuple of 3 int
        Shape of one bit image (Z, Y, X).
    codewords : array-like (n_codewords, n_bits) of 0/1
        The codebook, blanks included; ``barcode_id`` is the row.
    voxel_size_zyx_um : tuple of 3 float
    params : DecodingParams
    progress : callable(str), optional

    Returns
    -------
    DecodeResult

    Raises
    ------
    InputError
        For a codebook that is not 0/1 or has an empty codeword, a shape or
        voxel size that is not 3 positive numbers, or a ``read_bits`` whose
        array does not match the codebook's bit count or the shape.
    """
    with _blas_threads(params.n_threads):
        return _decode_tile(read_bits, shape_zyx, codewords, voxel_size_zyx_um, params, progress)


def array_reader(stack) -> Callable:
    """``read_bits`` for :func:`decode_tile` from an array-like ``(n_bits, Z, Y, X)`` already in memory
    (numpy, or anything sliced the same way): each call copies the region into ``out`` (float32), or into a
    fresh array without one."""
    def read_bits(z0, z1, window=None, out=None):
        y0, y1, x0, x1 = window if window is not None else (0, stack.shape[2], 0, stack.shape[3])
        region = stack[:, z0:z1, y0:y1, x0:x1]
        if out is None or out.shape != region.shape:  # a wrong shape is for the decoder to report
            return np.array(region, dtype=np.float32)
        np.copyto(out, region, casting="unsafe")
        return out

    return read_bits


def _decode_tile(read_bits, shape_zyx, codewords, voxel_size_zyx_um, params, progress):
    codewords = np.asarray(codewords)
    if codewords.ndim != 2 or codewords.shape[0] < 1 or codewords.shape[1] < 1:
        raise InputError(f"codewords: expected a 2D (n_codewords, n_bits) 0/1 array, got shape {codewords.shape}")
    if not np.isin(codewords, (0, 1)).all():
        raise InputError("codewords: expected only 0 and 1")
    codewords = codewords.astype(np.uint8)
    if (codewords.sum(axis=1) == 0).any():
        raise InputError(f"codewords: rows {np.flatnonzero(codewords.sum(axis=1) == 0).tolist()} have no bit on")
    n_bits = codewords.shape[1]
    shape = tuple(int(v) for v in shape_zyx)
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(f"shape_zyx: expected three positive integers, got {shape_zyx!r}")
    voxel = tuple(float(v) for v in voxel_size_zyx_um)
    if len(voxel) != 3 or not all(v > 0 for v in voxel):
        raise InputError(f"voxel_size_zyx_um: expected three positive floats, got {voxel_size_zyx_um!r}")
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

    def from_cache(z0, z1):
        return cache[:, z0:z1]

    scale, background = _initial_normalization(cache, params.init_snr)
    history = []
    converged = False
    for it in range(params.n_iterations):
        spots, peaks, _ = _decode_source(from_cache, Z, (cy, cx), codewords, scale, background, params, None)
        new_scale, new_bg = _refine(spots["barcode_id"].to_numpy(), peaks[:, :n_bits], codewords, scale, background,
                                    params.min_spots_per_bit)
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

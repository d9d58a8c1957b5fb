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
   Each time a proposed step's largest relative change is not smaller than
   the previous proposal's, this and every later step is halved (geometric
   interpolation of the scales, linear of the backgrounds): on a small crop
   the decoded set can flip between two states and the refinement would
   otherwise cycle between them. The brightest voxel, not the mean over the spot, because the mean depends on
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
   most ``distance_threshold``. The default magnitude threshold 0.8 is a voxel
   whose on-bits reach ~40 % of a typical spot peak; ``min_area`` is 5.
   Faint molecules (peak magnitude 0.85-1.0) have only 2-4 voxels above the
   magnitude threshold, and noise blobs are that small too, but on simulated
   tiles the small spots that were real molecules matched their codeword
   better (mean distance 0.28-0.45) than the noise ones (0.58-0.64): so a spot
   of ``min_area_confident`` (4) to ``min_area - 1`` voxels is kept when its
   mean distance is at most ``confident_distance`` (0.5, just below the 0.518
   of an ideal trace with one dropped bit: a small spot must look like a
   complete codeword); on pure-noise tiles this admits no more noise spots
   than ``min_area`` alone. How these defaults were chosen and checked is in
   benchmarks/RESULTS.md ("Pixel decoding"). The distance 0.65 admits a spot with one
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

import math
from dataclasses import asdict, dataclass, field
from typing import Callable

from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError

if TYPE_CHECKING:
    import pandas as pd

# The steps (numba kernels, pandas) are imported when a tile is decoded, not with this module: the workflow reads
# DecodingParams when it sizes a decode job's memory, at DAG time and in every cluster job.
_LAZY = {"enhance_bits": ".enhancement", "_sigmas_px": ".enhancement", "_n_threads": ".enhancement",
         "spot_columns": ".grouping", "_filter_halo_yx": ".tile", "_refinement_window": ".tile"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["DecodeResult", "DecodingParams", "array_reader", "decode_tile"]


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
    from ..cpus import blas_threads
    from .tile import _decode_tile

    with blas_threads(params.n_threads):
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

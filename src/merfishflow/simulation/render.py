"""Expected photoelectron images: splatting molecules, resampling the polyDT stain, PSF blur.

Images are rendered on a padded frame (``pad`` voxels on each side of the
tile) so that light from just outside the field of view blurs into it, then
cropped; FFT sizes are at least the padded size, which keeps the circular
convolution's wrap-around out of the cropped region.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft
from scipy import ndimage as ndi

from .noise import LatticeNoise

# polyDT texture: scales (µm) of the granular stain and their weights.
TEXTURE_SCALES_UM = (0.13, 0.35, 0.9)
TEXTURE_WEIGHTS = (1.5, 0.8, 0.5)
TEXTURE_LOG_SD = 0.8       # log-intensity contrast of the texture
FIDUCIAL_LEVELS = {"cytoplasm": 1.0, "nucleus": 0.35, "outside": 0.06}
BACKGROUND_OUTSIDE, BACKGROUND_INSIDE = 0.8, 1.2  # readout background relative level
MASK_SMOOTH_UM = 0.3


class Convolver:
    """FFT convolution of padded frames with per-channel PSFs (kernel spectra computed once).

    Parameters
    ----------
    psfs : list of ndarray
        One centred PSF (odd shape) per channel; each half-size must not exceed ``pad``.
    padded_shape : tuple of 3 int
        Shape of the frames that will be convolved.
    workers : int, optional
        Threads for scipy.fft.
    """

    def __init__(self, psfs, padded_shape, workers=None):
        self.padded_shape = tuple(int(n) for n in padded_shape)
        self.fft_shape = tuple(sfft.next_fast_len(n, real=True) for n in self.padded_shape)
        self.workers = workers
        self.spectra = []
        for psf in psfs:
            kernel = np.zeros(self.fft_shape, dtype=np.float64)
            kernel[tuple(slice(0, n) for n in psf.shape)] = psf
            # Move the PSF centre to index 0 so the output is not shifted.
            kernel = np.roll(kernel, [-(n // 2) for n in psf.shape], axis=(0, 1, 2))
            self.spectra.append(sfft.rfftn(kernel, self.fft_shape, workers=workers))

    def __call__(self, image, channel, shift_px=None):
        """Blur ``image`` with the channel's PSF and optionally shift it.

        Parameters
        ----------
        image : ndarray, shape ``padded_shape``
        channel : int
        shift_px : sequence of 3 float, optional
            Sub-pixel translation applied exactly (Fourier phase ramp): the
            output at ``q`` is the blurred input at ``q - shift_px``. Content
            within ``|shift_px|`` of the padded frame's edge wraps around.

        Returns
        -------
        ndarray of float64, shape ``padded_shape``
        """
        spectrum = sfft.rfftn(image, self.fft_shape, workers=self.workers)
        spectrum *= self.spectra[channel]
        if shift_px is not None and np.any(np.asarray(shift_px) != 0):
            spectrum *= _phase_ramp(self.fft_shape, shift_px)
        out = sfft.irfftn(spectrum, self.fft_shape, workers=self.workers)
        return out[tuple(slice(0, n) for n in self.padded_shape)]


def _phase_ramp(fft_shape, shift_px):
    """exp(-2 pi i k . shift) on the rfftn grid: translates by ``shift_px`` voxels."""
    ramps = []
    for axis, (n, s) in enumerate(zip(fft_shape, shift_px)):
        freq = sfft.rfftfreq(n) if axis == len(fft_shape) - 1 else sfft.fftfreq(n)
        ramps.append(np.exp(-2j * np.pi * freq * float(s)))
    return ramps[0][:, None, None] * ramps[1][None, :, None] * ramps[2][None, None, :]


def splat(positions_px, weights, shape):
    """Trilinear splatting: each point's weight is shared by its 8 neighbouring voxels.

    The weighted centroid of the splatted mass equals the point, so PSF
    convolution puts the spot's centre of mass exactly at the true position.

    Parameters
    ----------
    positions_px : ndarray, shape (n, 3)
        Voxel coordinates in the frame; points whose 8 neighbours are not all
        inside are dropped.
    weights : ndarray, shape (n,)
    shape : tuple of 3 int

    Returns
    -------
    ndarray of float64, shape ``shape``
    """
    out_size = int(np.prod(shape))
    positions_px = np.asarray(positions_px, dtype=np.float64).reshape(-1, 3)
    base = np.floor(positions_px).astype(np.int64)
    frac = positions_px - base
    inside = np.all((base >= 0) & (base <= np.asarray(shape) - 2), axis=1)
    base, frac, weights = base[inside], frac[inside], np.asarray(weights, dtype=np.float64)[inside]
    if len(base) == 0:
        return np.zeros(shape)
    indices = []
    values = []
    for dz in (0, 1):
        wz = frac[:, 0] if dz else 1.0 - frac[:, 0]
        for dy in (0, 1):
            wy = frac[:, 1] if dy else 1.0 - frac[:, 1]
            for dx in (0, 1):
                wx = frac[:, 2] if dx else 1.0 - frac[:, 2]
                indices.append(np.ravel_multi_index((base[:, 0] + dz, base[:, 1] + dy, base[:, 2] + dx), shape))
                values.append(weights * wz * wy * wx)
    flat = np.bincount(np.concatenate(indices), weights=np.concatenate(values), minlength=out_size)
    return flat.reshape(shape)


class PolyDTTexture:
    """Granular polyDT-like stain intensity (relative, > 0) in world coordinates.

    Sum of independent smooth noise fields at a few scales, exponentiated
    (log-normal, like a stain with bright granules), with mean 1.

    Parameters
    ----------
    entropy : int
    first_stream : int
        Stream id of the first scale; the scales use consecutive ids.
    voxel_size_zyx_um : sequence of 3 float
    """

    def __init__(self, entropy, first_stream, voxel_size_zyx_um):
        voxel = np.asarray(voxel_size_zyx_um, dtype=np.float64)
        self.fields = []
        for i, scale in enumerate(TEXTURE_SCALES_UM):
            # Lattice no finer than the voxels, filtered over >= 1 lattice step.
            spacing = np.maximum(voxel, scale / 1.5)
            sigma = np.maximum(scale / spacing, 1.0)
            self.fields.append(LatticeNoise(entropy, first_stream + i, spacing, sigma))
        self.weights = np.asarray(TEXTURE_WEIGHTS) / np.sqrt(np.sum(np.square(TEXTURE_WEIGHTS)))

    def sample_grid(self, origin_um, step_um, shape_zyx):
        """Texture values on a regular grid of world points, float32 ``shape_zyx``."""
        total = np.zeros(tuple(shape_zyx), dtype=np.float32)
        for weight, field in zip(self.weights, self.fields):
            total += field.sample_grid(origin_um, step_um, shape_zyx) * np.float32(weight)
        # total has unit variance, so exp(s * total - s^2 / 2) has mean 1.
        return np.exp(TEXTURE_LOG_SD * total - TEXTURE_LOG_SD**2 / 2).astype(np.float32)


def tile_patch(cells, texture, origin_um, voxel_size_zyx_um, start_px, shape_zyx, fiducial_photons):
    """Stain and cell fields of one tile, on its round-0 voxel grid extended by a margin.

    Parameters
    ----------
    cells : Cells
    texture : PolyDTTexture
    origin_um : sequence of 3 float
        True world position of the tile's voxel (0, 0, 0).
    voxel_size_zyx_um : sequence of 3 float
    start_px : sequence of 3 int
        Round-0 pixel coordinate of the patch's first voxel (negative: margin).
    shape_zyx : tuple of 3 int
        Patch shape.
    fiducial_photons : float

    Returns
    -------
    labels : ndarray of int32
        Global cell ids (0 = background).
    fiducial : ndarray of float32
        Expected fiducial photoelectrons per voxel before PSF blur.
    cell_mask : ndarray of float32
        Smoothed 0..1 "inside a cell" fraction (modulates readout background).
    """
    voxel = np.asarray(voxel_size_zyx_um, dtype=np.float64)
    first = np.asarray(origin_um, dtype=np.float64) + np.asarray(start_px) * voxel
    labels, nucleus = cells.label_grid(first, voxel, shape_zyx)
    inside = labels > 0
    level = np.where(inside, np.where(nucleus, FIDUCIAL_LEVELS["nucleus"], FIDUCIAL_LEVELS["cytoplasm"]),
                     FIDUCIAL_LEVELS["outside"]).astype(np.float32)
    fiducial = np.float32(fiducial_photons) * level * texture.sample_grid(first, voxel, shape_zyx)
    cell_mask = ndi.gaussian_filter(inside.astype(np.float32), MASK_SMOOTH_UM / voxel, mode="nearest")
    return labels, fiducial, cell_mask


@dataclass(frozen=True)
class TileScene:
    """What one tile needs to render any round (all in the tile's round-0 pixel frame).

    Attributes
    ----------
    origin_um : ndarray, shape (3,)
        True world position of the tile's voxel (0, 0, 0).
    fiducial : ndarray of float32
        Expected fiducial photoelectrons (before blur) on the patch: the tile
        extended by ``margin`` voxels per side.
    fiducial_coeffs : ndarray of float32
        Its cubic B-spline coefficients (for resampling under deformation).
    cell_mask : ndarray of float32
        Smoothed inside-a-cell fraction on the same patch.
    spot_px : ndarray, shape (n, 3)
        Round-0 pixel positions of the molecules near the tile.
    spot_bit_photons : ndarray, shape (n, n_bits)
        Their rendered photoelectrons per bit.
    spot_displacement_px : ndarray, shape (n_rounds, n, 3)
        Their displacement ``shift_r + deformation_r`` in each round.
    bead_px, bead_displacement_px, bead_photons : ndarray or None
        Round-0 pixel positions of the fiducial beads near the tile, their
        displacement in each round and their photoelectrons; None when the
        fiducial channel shows the polyDT stain (``fiducial``) instead.
    """

    origin_um: np.ndarray
    fiducial: np.ndarray
    fiducial_coeffs: np.ndarray
    cell_mask: np.ndarray
    spot_px: np.ndarray
    spot_bit_photons: np.ndarray
    spot_displacement_px: np.ndarray
    bead_px: np.ndarray | None = None
    bead_displacement_px: np.ndarray | None = None
    bead_photons: np.ndarray | None = None


class FrameRenderer:
    """Expected photoelectrons of one tile x round, all channels (fiducial first).

    Parameters
    ----------
    psfs : list of ndarray
        Fiducial PSF, then one per readout channel.
    image_shape_zyx : tuple of 3 int
    voxel_size_zyx_um : sequence of 3 float
    pad : ndarray of int, shape (3,)
        Padding of the rendered frame (>= PSF half-size + 1).
    margin : ndarray of int, shape (3,)
        Margin of the tile patches (>= pad + largest round displacement).
    background_photons : float
    """

    def __init__(self, psfs, image_shape_zyx, voxel_size_zyx_um, pad, margin, background_photons):
        self.shape = tuple(int(n) for n in image_shape_zyx)
        self.voxel = np.asarray(voxel_size_zyx_um, dtype=np.float64)
        self.pad = np.asarray(pad, dtype=np.int64)
        self.margin = np.asarray(margin, dtype=np.int64)
        self.padded_shape = tuple(int(n + 2 * p) for n, p in zip(self.shape, self.pad))
        self.crop = tuple(slice(int(p), int(p) + n) for p, n in zip(self.pad, self.shape))
        self.background_photons = float(background_photons)
        self.n_channels = len(psfs)
        # One FFT thread per frame: frames are rendered in parallel instead.
        self.convolver = Convolver(psfs, self.padded_shape, workers=1)

    def render(self, scene, transform, bits):
        """Expected photoelectrons of every channel of one round.

        Parameters
        ----------
        scene : TileScene
        transform : RoundTransform
        bits : sequence of int
            0-based bit imaged by each readout channel in this round.

        Returns
        -------
        ndarray of float64, shape (n_channels, Z, Y, X)
        """
        # Resampling applies the deformation and the whole-pixel part of the
        # shift; the fractional part is applied exactly in Fourier space, so
        # the stain moves by exactly the truth shift (no interpolation bias).
        whole = np.round(transform.shift_px)
        fraction = transform.shift_px - whole
        if transform.deformation is None:
            # A whole-pixel shift needs no interpolation: the frame is a slice of the patch.
            start = self.margin - self.pad - whole.astype(np.int64)
            window = tuple(slice(int(a), int(a) + n) for a, n in zip(start, self.padded_shape))
            fiducial = scene.fiducial[window].astype(np.float64) if scene.bead_px is None else None
            mask = ndi.shift(scene.cell_mask, fraction, order=1, mode="nearest")[window]
        else:
            source = transform.inverse_grid(scene.origin_um, self.voxel, -self.pad, self.padded_shape,
                                            shift_px=whole)
            source += self.margin.reshape(3, 1, 1, 1)
            fiducial = None if scene.bead_px is not None else ndi.map_coordinates(
                scene.fiducial_coeffs, source, order=3, mode="nearest", prefilter=False)
            source -= fraction.reshape(3, 1, 1, 1)
            mask = ndi.map_coordinates(scene.cell_mask, source, order=1, mode="nearest", prefilter=False)
            del source
        out = np.empty((self.n_channels,) + self.shape, dtype=np.float64)
        background = self.background_photons * (
            BACKGROUND_OUTSIDE + (BACKGROUND_INSIDE - BACKGROUND_OUTSIDE) * mask[self.crop])
        if scene.bead_px is None:
            out[0] = self.convolver(fiducial, 0, shift_px=fraction)[self.crop]
        else:
            # Beads are points like the molecules: moved by the same shift + deformation, then blurred.
            beads = scene.bead_px + scene.bead_displacement_px[transform.round_index] + self.pad
            out[0] = self.convolver(splat(beads, scene.bead_photons, self.padded_shape), 0)[self.crop] + background
        q = scene.spot_px + scene.spot_displacement_px[transform.round_index] + self.pad
        for c, bit in enumerate(bits):
            weights = scene.spot_bit_photons[:, bit]
            on = weights > 0
            image = splat(q[on], weights[on], self.padded_shape)
            out[1 + c] = self.convolver(image, 1 + c)[self.crop] + background
        return out

"""sCMOS camera model: shot noise, read noise, gain, fixed-pattern offset and hot pixels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HOT_PIXEL_ADU_RANGE = (2000.0, 8000.0)  # mean extra dark counts of a hot pixel


@dataclass(frozen=True)
class Camera:
    """Fixed properties of one camera; the same for every tile, round, channel and plane.

    Attributes
    ----------
    e_per_adu : float
        Gain: photoelectrons per ADU.
    read_noise_e : float
        Gaussian read noise (standard deviation) in electrons.
    offset_map_adu : ndarray of float64, shape (Y, X)
        Per-pixel bias: ``offset_adu`` plus fixed-pattern noise.
    hot_yx : ndarray of int, shape (n_hot, 2)
        Hot pixel (row, column) positions.
    hot_dark_adu : ndarray of float64, shape (n_hot,)
        Mean extra dark counts of each hot pixel in ADU.
    """

    e_per_adu: float
    read_noise_e: float
    offset_map_adu: np.ndarray
    hot_yx: np.ndarray
    hot_dark_adu: np.ndarray

    @classmethod
    def random(cls, shape_yx, e_per_adu, offset_adu, fixed_pattern_sd_adu, read_noise_e, n_hot_pixels, rng):
        """Draw the offset map and hot pixels of a camera."""
        ny, nx = shape_yx
        offset_map = offset_adu + fixed_pattern_sd_adu * rng.standard_normal((ny, nx))
        flat = rng.choice(ny * nx, size=n_hot_pixels, replace=False) if n_hot_pixels else np.zeros(0, np.int64)
        flat = np.sort(flat)
        hot_yx = np.stack(np.unravel_index(flat, (ny, nx)), axis=1).astype(np.int64).reshape(-1, 2)
        hot_adu = rng.uniform(*HOT_PIXEL_ADU_RANGE, size=n_hot_pixels)
        return cls(float(e_per_adu), float(read_noise_e), offset_map, hot_yx, hot_adu)

    @property
    def dark_electrons(self):
        """Mean dark signal in electrons per pixel (non-zero only at hot pixels), (Y, X)."""
        dark = np.zeros(self.offset_map_adu.shape)
        dark[self.hot_yx[:, 0], self.hot_yx[:, 1]] = self.hot_dark_adu * self.e_per_adu
        return dark

    @property
    def dark_frame(self):
        """Per-pixel mean of a dark image in ADU (offset map + hot pixel dark counts), float32 (Y, X)."""
        return (self.offset_map_adu + self.dark_electrons / self.e_per_adu).astype(np.float32)

    def expose(self, electrons, rng):
        """Digitize expected photoelectrons into a noisy uint16 image.

        Parameters
        ----------
        electrons : ndarray, shape (..., Y, X)
            Expected photoelectrons per pixel (clipped at 0).
        rng : numpy.random.Generator

        Returns
        -------
        ndarray of uint16, same shape
            ``round(Poisson(electrons + dark) + Normal(0, read_noise)) / e_per_adu + offset_map``,
            clipped to 0..65535.
        """
        lam = np.maximum(electrons, 0.0) + self.dark_electrons
        counts = rng.poisson(lam).astype(np.float32)
        if self.read_noise_e > 0:
            counts += np.float32(self.read_noise_e) * rng.standard_normal(counts.shape, dtype=np.float32)
        adu = counts / np.float32(self.e_per_adu) + self.offset_map_adu.astype(np.float32)
        return np.clip(np.rint(adu), 0, 65535).astype(np.uint16)

"""Smooth random fields defined in world coordinates, identical wherever they are evaluated.

White noise lives on a world-aligned lattice and is drawn block by block, each
block from its own seed (derived from the block's lattice index), so any
region can be generated on its own and two tiles that overlap see exactly the
same values; memory and time scale with the region asked for, not the world.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
from scipy import ndimage as ndi

# Keeps block indices non-negative for SeedSequence's spawn_key.
_INDEX_OFFSET = 1 << 40
_TRUNCATE = 4.0
_CHUNK = 128  # lattice points per axis of one sampling chunk
_CACHE_BYTES = 32 * 2**20  # white-noise blocks kept per field


def _gaussian_kernel_sq_sum(sigma):
    """Sum of squared taps of scipy's 1D Gaussian kernel (the filtered noise variance per axis)."""
    if sigma <= 0:
        return 1.0
    radius = int(_TRUNCATE * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    w /= w.sum()
    return float((w**2).sum())


class LatticeNoise:
    """Gaussian-filtered white noise with unit variance on a world lattice.

    Parameters
    ----------
    entropy : int
        Seed of the experiment.
    stream : int
        Identifies this field among the experiment's fields (independent streams).
    spacing_um : sequence of 3 float
        Lattice spacing (z, y, x) in µm; lattice point ``i`` is at ``i * spacing_um``.
    sigma_lattice : sequence of 3 float
        Gaussian filter width in lattice units.
    block : sequence of 3 int, optional
        Lattice points per independently seeded block.
    """

    def __init__(self, entropy, stream, spacing_um, sigma_lattice, block=(16, 64, 64)):
        self.entropy = int(entropy)
        self.stream = int(stream)
        self.spacing_um = np.asarray(spacing_um, dtype=np.float64)
        self.sigma = np.asarray(sigma_lattice, dtype=np.float64)
        self.block = np.asarray(block, dtype=np.int64)
        self.halo = np.array([int(_TRUNCATE * s + 0.5) + 1 for s in self.sigma], dtype=np.int64)
        var = np.prod([_gaussian_kernel_sq_sum(s) for s in self.sigma])
        self.scale = 1.0 / np.sqrt(var)
        self._cache = OrderedDict()

    def _block_noise(self, index):
        key = tuple(int(i) for i in index)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        spawn_key = (self.stream,) + tuple(i + _INDEX_OFFSET for i in key)
        rng = np.random.default_rng(np.random.SeedSequence(self.entropy, spawn_key=spawn_key))
        block = rng.standard_normal(tuple(self.block), dtype=np.float32)
        self._cache[key] = block
        # Neighbouring tiles and repeated samples reuse blocks; the cache is
        # bounded so memory does not grow with the world.
        while len(self._cache) * block.nbytes > _CACHE_BYTES:
            self._cache.popitem(last=False)
        return block

    def grid(self, lo, shape):
        """Field values on lattice points ``lo .. lo + shape - 1``.

        Parameters
        ----------
        lo : sequence of 3 int
            First lattice index (may be negative).
        shape : sequence of 3 int
            Number of lattice points per axis.

        Returns
        -------
        ndarray of float32, shape ``shape``
        """
        lo = np.asarray(lo, dtype=np.int64)
        shape = np.asarray(shape, dtype=np.int64)
        need_lo = lo - self.halo
        need_hi = lo + shape + self.halo  # exclusive
        b_lo = need_lo // self.block
        b_hi = (need_hi - 1) // self.block
        n_blocks = b_hi - b_lo + 1
        white = np.empty(tuple(n_blocks * self.block), dtype=np.float32)
        bz, by, bx = self.block
        for iz in range(n_blocks[0]):
            for iy in range(n_blocks[1]):
                for ix in range(n_blocks[2]):
                    white[iz * bz:(iz + 1) * bz, iy * by:(iy + 1) * by, ix * bx:(ix + 1) * bx] = \
                        self._block_noise(b_lo + (iz, iy, ix))
        start = need_lo - b_lo * self.block
        stop = start + shape + 2 * self.halo
        white = white[start[0]:stop[0], start[1]:stop[1], start[2]:stop[2]]
        # Every kept value sees only points within the halo, so the result does
        # not depend on how far the region extends: tiles agree where they overlap.
        smooth = ndi.gaussian_filter(white, self.sigma, truncate=_TRUNCATE, mode="nearest")
        h = self.halo
        out = smooth[h[0]:h[0] + shape[0], h[1]:h[1] + shape[1], h[2]:h[2] + shape[2]]
        return (out * np.float32(self.scale)).astype(np.float32)

    def sample(self, points_um):
        """Field values at arbitrary world points (linear interpolation between lattice points).

        Parameters
        ----------
        points_um : ndarray, shape (..., 3)
            World coordinates (z, y, x) in µm.

        Returns
        -------
        ndarray of float32, shape ``points_um.shape[:-1]``
        """
        points_um = np.asarray(points_um, dtype=np.float64)
        lead = points_um.shape[:-1]
        lattice = points_um.reshape(-1, 3) / self.spacing_um
        out = np.zeros(len(lattice), dtype=np.float32)
        if len(lattice) == 0:
            return out.reshape(lead)
        # Scattered points over a large world are handled in chunks so that the
        # generated lattice stays about the size of the region really sampled.
        chunk = np.floor(lattice / _CHUNK).astype(np.int64)
        c_lo = chunk.min(axis=0)
        dims = chunk.max(axis=0) - c_lo + 1
        key = np.ravel_multi_index(tuple((chunk - c_lo).T), tuple(dims))
        if np.prod(dims) == 1:
            groups = [np.arange(len(lattice))]
        else:
            order = np.argsort(key, kind="stable")
            counts = np.bincount(key, minlength=int(np.prod(dims)))
            groups = [g for g in np.split(order, np.cumsum(counts)[:-1]) if len(g)]
        for index in groups:
            part = lattice[index]
            lo = np.floor(part.min(axis=0)).astype(np.int64) - 1
            hi = np.floor(part.max(axis=0)).astype(np.int64) + 2
            values = self.grid(lo, hi - lo + 1)
            out[index] = ndi.map_coordinates(values, (part - lo).T, order=1, mode="nearest", prefilter=False)
        return out.reshape(lead)

    def sample_grid(self, origin_um, step_um, shape_zyx):
        """Field values on a regular grid of world points (linear interpolation).

        Faster than :meth:`sample` on a grid: the lattice coordinates are an
        affine function of the grid index, which scipy resamples separably.

        Parameters
        ----------
        origin_um : sequence of 3 float
            World position of grid point (0, 0, 0).
        step_um : sequence of 3 float
            Grid spacing.
        shape_zyx : tuple of 3 int

        Returns
        -------
        ndarray of float32, shape ``shape_zyx``
        """
        origin = np.asarray(origin_um, dtype=np.float64) / self.spacing_um
        step = np.asarray(step_um, dtype=np.float64) / self.spacing_um
        shape = np.asarray(shape_zyx, dtype=np.int64)
        last = origin + (shape - 1) * step
        lo = np.floor(np.minimum(origin, last)).astype(np.int64) - 1
        hi = np.floor(np.maximum(origin, last)).astype(np.int64) + 2
        values = self.grid(lo, hi - lo + 1)
        return ndi.affine_transform(values, step, offset=origin - lo, output_shape=tuple(int(n) for n in shape),
                                    order=1, mode="nearest", prefilter=False).astype(np.float32)

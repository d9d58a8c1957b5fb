"""Tile grid: nominal stage positions and the true positions the stage really reached."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Stage z repeatability is much better than lateral (piezo focus vs. xy stage).
Z_ERROR_FRACTION = 0.2


@dataclass(frozen=True)
class TileLayout:
    """Positions of every tile's first voxel, µm, (z, y, x).

    Attributes
    ----------
    nominal_um : ndarray, shape (n_tiles, 3)
        Positions written to stage_positions.csv (z = 0).
    true_um : ndarray, shape (n_tiles, 3)
        Where the tile really is: nominal + stage error. Everything is rendered here.
    grid_yx : ndarray of int, shape (n_tiles, 2)
        Row and column of each tile in the grid (tiles numbered row-major).
    """

    nominal_um: np.ndarray
    true_um: np.ndarray
    grid_yx: np.ndarray

    @property
    def error_um(self):
        return self.true_um - self.nominal_um

    @property
    def n_tiles(self):
        return len(self.true_um)


def nominal_grid(n_tiles_yx, image_shape_zyx, voxel_size_zyx_um, overlap_fraction):
    """Row-major tile grid and the nominal stage positions written to stage_positions.csv.

    Returns
    -------
    grid_yx : ndarray of int, shape (n_tiles, 2)
    nominal_um : ndarray, shape (n_tiles, 3)
        Rounded to the 6 decimals the CSV keeps, so that the positions known
        before simulating equal the ones read back from the file.
    """
    ny, nx = n_tiles_yx
    _, sy, sx = image_shape_zyx
    _, dy, dx = voxel_size_zyx_um
    step_y = sy * dy * (1.0 - overlap_fraction)
    step_x = sx * dx * (1.0 - overlap_fraction)
    grid = np.array([(i, j) for i in range(ny) for j in range(nx)], dtype=np.int64).reshape(-1, 2)
    nominal = np.zeros((len(grid), 3))
    nominal[:, 1] = grid[:, 0] * step_y
    nominal[:, 2] = grid[:, 1] * step_x
    return grid, np.vectorize(lambda v: float(f"{v:.6f}"))(nominal).astype(np.float64).reshape(nominal.shape)


def make_tile_layout(n_tiles_yx, image_shape_zyx, voxel_size_zyx_um, overlap_fraction, stage_error_sd_um, rng):
    """Row-major grid of tiles with the given overlap and random stage errors.

    Parameters
    ----------
    n_tiles_yx : tuple of 2 int
        Tiles per column and per row.
    image_shape_zyx : tuple of 3 int
        Tile shape in voxels.
    voxel_size_zyx_um : tuple of 3 float
        Voxel size in µm.
    overlap_fraction : float
        Nominal fractional overlap of neighbouring tiles.
    stage_error_sd_um : float
        Lateral standard deviation of the stage error; z uses
        ``Z_ERROR_FRACTION`` times it.
    rng : numpy.random.Generator

    Returns
    -------
    TileLayout
    """
    grid, nominal = nominal_grid(n_tiles_yx, image_shape_zyx, voxel_size_zyx_um, overlap_fraction)
    sd = np.array([Z_ERROR_FRACTION, 1.0, 1.0]) * stage_error_sd_um
    error = rng.normal(size=nominal.shape) * sd
    return TileLayout(nominal_um=nominal, true_um=nominal + error, grid_yx=grid)

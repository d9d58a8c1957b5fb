"""The sample in world coordinates: a tissue section of 3D cells and the RNA molecules in them.

Cells are Voronoi regions of jittered seeds cut to noisy spheres of about the
cell radius (so neighbours touch along flat faces and some space stays
empty), each with a spherical nucleus around its seed. The section is a slab
in z slightly thicker than the imaged stack, so out-of-focus molecules above
and below the stack still add blur, as in real data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from .noise import LatticeNoise

SECTION_MARGIN_UM = 0.5          # section extends this far beyond the nominal stack
SEED_SPACING_RADII = 1.9         # seed lattice spacing, in cell radii
SEED_JITTER = 0.2                # seed jitter, fraction of the spacing
EMPTY_SEED_FRACTION = 0.15       # seeds that make extracellular space instead of a cell
RADIUS_LOG_SD = 0.1              # cell-to-cell radius variation
SHAPE_NOISE_AMPLITUDE = 0.2      # relative radius modulation of the cell boundary
NUCLEUS_RADIUS_FRACTION = 0.45   # nucleus radius / cell radius
N_CELL_TYPES = 3                 # cell types with different expression profiles
EXPRESSION_LOG_SD = 1.0          # spread of gene expression (global and per type)


@dataclass(frozen=True)
class Cells:
    """Cells of the whole sample.

    Attributes
    ----------
    seeds_um : ndarray, shape (n_seeds, 3)
        Voronoi seeds (z, y, x) in world µm; a cell's nucleus is centred on its seed.
    cell_id : ndarray of int32, shape (n_seeds,)
        Global cell id of each seed, 1..n_cells; 0 for seeds that make empty space.
    radius_um, nucleus_radius_um : ndarray, shape (n_seeds,)
    cell_type : ndarray of int, shape (n_seeds,)
    section_z_um : tuple of 2 float
        World z range of the tissue section; nothing exists outside it.
    shape_noise : LatticeNoise
        Smooth unit-variance field that modulates the cell boundaries.
    """

    seeds_um: np.ndarray
    cell_id: np.ndarray
    radius_um: np.ndarray
    nucleus_radius_um: np.ndarray
    cell_type: np.ndarray
    section_z_um: tuple
    shape_noise: LatticeNoise

    def __post_init__(self):
        object.__setattr__(self, "_tree", cKDTree(self.seeds_um))

    @property
    def n_cells(self):
        return int(self.cell_id.max(initial=0))

    def label(self, world_um):
        """Cell id and nucleus membership at world points.

        Parameters
        ----------
        world_um : ndarray, shape (..., 3)

        Returns
        -------
        cell_id : ndarray of int32, shape (...)
            0 outside every cell.
        in_nucleus : ndarray of bool, shape (...)
        """
        world_um = np.asarray(world_um, dtype=np.float64)
        return self._label(world_um.reshape(-1, 3), self.shape_noise.sample(world_um.reshape(-1, 3)),
                           world_um.shape[:-1])

    def label_grid(self, origin_um, step_um, shape_zyx):
        """:meth:`label` on a regular grid of world points (same result, faster).

        Parameters
        ----------
        origin_um : sequence of 3 float
            World position of grid point (0, 0, 0).
        step_um : sequence of 3 float
        shape_zyx : tuple of 3 int

        Returns
        -------
        cell_id : ndarray of int32, shape ``shape_zyx``
        in_nucleus : ndarray of bool, shape ``shape_zyx``
        """
        axes = [origin_um[a] + step_um[a] * np.arange(shape_zyx[a]) for a in range(3)]
        pts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
        noise = self.shape_noise.sample_grid(origin_um, step_um, shape_zyx).reshape(-1)
        return self._label(pts, noise, tuple(shape_zyx))

    def _label(self, pts, noise, lead):
        dist, nearest = self._tree.query(pts, workers=-1)
        noise = noise.astype(np.float64)
        in_section = (pts[:, 0] >= self.section_z_um[0]) & (pts[:, 0] <= self.section_z_um[1])
        inside = in_section & (dist < self.radius_um[nearest] * (1.0 + SHAPE_NOISE_AMPLITUDE * noise))
        ids = np.where(inside, self.cell_id[nearest], 0).astype(np.int32)
        nucleus = (ids > 0) & (dist < self.nucleus_radius_um[nearest] * (1.0 + 0.4 * SHAPE_NOISE_AMPLITUDE * noise))
        return ids.reshape(lead), nucleus.reshape(lead)


def make_cells(world_lo_um, world_hi_um, section_z_um, cell_radius_um, rng, entropy, noise_stream):
    """Jittered hexagonal-lattice seeds covering the world box, with radii, nuclei and types.

    Parameters
    ----------
    world_lo_um, world_hi_um : sequence of 3 float
        Box (z, y, x) that must be covered with cells (y and x used; z from the section).
    section_z_um : tuple of 2 float
    cell_radius_um : float
    rng : numpy.random.Generator
    entropy, noise_stream : int
        Seed and stream id of the boundary noise field.

    Returns
    -------
    Cells
    """
    spacing = SEED_SPACING_RADII * cell_radius_um
    # Hexagonal lattice laterally (tissue-like packing, six neighbours) over
    # the box plus one cell radius, so cells cut by the box edge still exist.
    lo_yx = np.asarray(world_lo_um[1:], dtype=np.float64) - cell_radius_um
    hi_yx = np.asarray(world_hi_um[1:], dtype=np.float64) + cell_radius_um
    row_step = spacing * np.sqrt(3.0) / 2.0
    n_rows = int(np.ceil((hi_yx[0] - lo_yx[0]) / row_step)) + 1
    n_cols = int(np.ceil((hi_yx[1] - lo_yx[1]) / spacing)) + 2
    # Seed layers lie inside the section (one layer unless the section is
    # thicker than a cell spacing), so every cell really reaches the section.
    thickness = section_z_um[1] - section_z_um[0]
    n_layers = max(1, int(round(thickness / spacing)))
    layer_step = thickness / n_layers
    layers = section_z_um[0] + (np.arange(n_layers) + 0.5) * layer_step
    seeds = []
    for k, z in enumerate(layers):
        for i in range(n_rows):
            offset = spacing / 2.0 if (i + k) % 2 else 0.0
            for j in range(n_cols):
                seeds.append((z, lo_yx[0] + i * row_step, lo_yx[1] - spacing / 2.0 + offset + j * spacing))
    seeds = np.asarray(seeds, dtype=np.float64).reshape(-1, 3)
    jitter = np.array([min(SEED_JITTER * spacing, 0.4 * layer_step), SEED_JITTER * spacing, SEED_JITTER * spacing])
    seeds = seeds + rng.uniform(-1.0, 1.0, size=seeds.shape) * jitter
    n = len(seeds)
    radius = cell_radius_um * np.exp(rng.normal(0.0, RADIUS_LOG_SD, size=n))
    empty = rng.random(n) < EMPTY_SEED_FRACTION
    cell_id = np.zeros(n, dtype=np.int32)
    cell_id[~empty] = np.arange(1, int((~empty).sum()) + 1, dtype=np.int32)
    cell_type = rng.integers(0, N_CELL_TYPES, size=n)
    spacing_noise = cell_radius_um / 10.0
    noise = LatticeNoise(entropy, noise_stream, (spacing_noise,) * 3, (2.0, 2.0, 2.0))
    return Cells(seeds, cell_id, radius, NUCLEUS_RADIUS_FRACTION * radius, cell_type,
                 (float(section_z_um[0]), float(section_z_um[1])), noise)


@dataclass(frozen=True)
class Spots:
    """RNA molecules of the whole sample (one row per molecule).

    Attributes
    ----------
    world_um : ndarray, shape (n, 3)
        Position (z, y, x) in world µm.
    cell_id : ndarray of int32
        Cell the molecule lies in (0 = none).
    barcode_id : ndarray of int32
        Row of the codebook (genes only, never blanks).
    photons : ndarray of float64
        Mean integrated photoelectrons of the molecule in an "on" bit
        (``spot_photons`` times the molecule's brightness factor).
    bit_photons : ndarray of float64, shape (n, n_bits)
        Integrated photoelectrons rendered in each bit (0 for "off" and dropped bits).
    dropped_mask : ndarray of int64
        Bit b (1-based) dropped out <=> ``mask & (1 << (b - 1))``.
    """

    world_um: np.ndarray
    cell_id: np.ndarray
    barcode_id: np.ndarray
    photons: np.ndarray
    bit_photons: np.ndarray
    dropped_mask: np.ndarray

    def __len__(self):
        return len(self.world_um)


class _Exclusion:
    """Spatial hash that rejects molecules too close to an accepted one (ellipsoidal zone)."""

    def __init__(self, radius_zyx_um):
        self.radius = np.asarray(radius_zyx_um, dtype=np.float64)
        self.cells = {}

    def try_add(self, p):
        p = p / self.radius
        key = tuple(np.floor(p).astype(np.int64))
        for dz in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    for other in self.cells.get((key[0] + dz, key[1] + dy, key[2] + dx), ()):
                        if ((p - other) ** 2).sum() < 1.0:
                            return False
        self.cells.setdefault(key, []).append(p)
        return True


def _lognormal_unit_mean(rng, cv, size):
    """Multiplicative factors with mean 1 and coefficient of variation ``cv``."""
    sigma2 = np.log1p(cv**2)
    return np.exp(rng.normal(-sigma2 / 2.0, np.sqrt(sigma2), size=size))


def place_molecules(cells, spots_per_cell, fraction_outside, world_lo_um, world_hi_um, exclusion_zyx_um, rng,
                    max_attempts=40):
    """Positions and cells of all molecules.

    Each cell that reaches the section gets Poisson(``spots_per_cell``)
    molecules uniformly inside its part of the section; extracellular
    molecules are uniform in the empty space of the world box, as many as make
    ``fraction_outside`` of the total on average. A candidate closer than the
    exclusion ellipsoid to an accepted molecule is redrawn (keeps spots
    separable, like real data at moderate density).

    Returns
    -------
    world_um : ndarray, shape (n, 3)
    cell_id : ndarray of int32
    """
    lo = np.array([cells.section_z_um[0], world_lo_um[1], world_lo_um[2]])
    hi = np.array([cells.section_z_um[1], world_hi_um[1], world_hi_um[2]])
    exclusion = _Exclusion(exclusion_zyx_um)
    seeds = np.flatnonzero(cells.cell_id > 0)
    remaining = np.zeros(len(cells.seeds_um), dtype=np.int64)
    remaining[seeds] = rng.poisson(spots_per_cell, size=len(seeds))
    accepted_pos = []
    accepted_cell = []
    for _ in range(max_attempts):
        todo = np.flatnonzero(remaining > 0)
        if todo.size == 0:
            break
        n_cand = 3 * remaining[todo] + 4
        owner = np.repeat(todo, n_cand)
        reach = (cells.radius_um[owner] * (1.0 + 3 * SHAPE_NOISE_AMPLITUDE))[:, None]
        # Only the section limits a cell; its molecules beyond the world box
        # are never imaged but keep every cell's count Poisson(spots_per_cell).
        box_lo = cells.seeds_um[owner] - reach
        box_hi = cells.seeds_um[owner] + reach
        box_lo[:, 0] = np.maximum(box_lo[:, 0], lo[0])
        box_hi[:, 0] = np.minimum(box_hi[:, 0], hi[0])
        cand = box_lo + rng.random((len(owner), 3)) * np.clip(box_hi - box_lo, 0, None)
        ids, _ = cells.label(cand)
        for p, seed, got in zip(cand, owner, ids):
            if remaining[seed] > 0 and got == cells.cell_id[seed] and exclusion.try_add(p):
                accepted_pos.append(p)
                accepted_cell.append(got)
                remaining[seed] -= 1
    # The fraction refers to the molecules of the world box (cells reaching
    # beyond it have molecules that are never imaged).
    placed_inside = np.asarray(accepted_pos).reshape(-1, 3)
    n_inside = int(np.all((placed_inside >= lo) & (placed_inside <= hi), axis=1).sum())
    if fraction_outside > 0 and n_inside > 0:
        n_outside = int(rng.poisson(fraction_outside / (1.0 - fraction_outside) * n_inside))
    elif fraction_outside > 0:
        n_outside = int(rng.poisson(fraction_outside * spots_per_cell))
    else:
        n_outside = 0
    placed = 0
    for _ in range(max_attempts):
        if placed >= n_outside:
            break
        cand = lo + rng.random((4 * (n_outside - placed) + 8, 3)) * (hi - lo)
        ids, _ = cells.label(cand)
        for p, got in zip(cand, ids):
            if placed < n_outside and got == 0 and exclusion.try_add(p):
                accepted_pos.append(p)
                accepted_cell.append(0)
                placed += 1
    world = np.array(accepted_pos, dtype=np.float64).reshape(-1, 3)
    return world, np.array(accepted_cell, dtype=np.int32)


def expression_profiles(n_genes, rng):
    """Relative expression of each gene: a global log-normal profile times one per cell type.

    Returns
    -------
    global_profile : ndarray, shape (n_genes,)
        Sums to 1; used for extracellular molecules.
    type_profiles : ndarray, shape (N_CELL_TYPES, n_genes)
        Rows sum to 1.
    """
    base = np.exp(rng.normal(0.0, EXPRESSION_LOG_SD, size=n_genes))
    types = base[None, :] * np.exp(rng.normal(0.0, EXPRESSION_LOG_SD, size=(N_CELL_TYPES, n_genes)))
    return base / base.sum(), types / types.sum(axis=1, keepdims=True)


def make_spots(cells, codebook, n_genes, world_um, cell_id, params, rng):
    """Genes, brightness and dropouts of the placed molecules.

    Parameters
    ----------
    cells : Cells
    codebook : ndarray of uint8, shape (n_codewords, n_bits)
        Genes are rows ``0 .. n_genes - 1``; blanks are never emitted.
    n_genes : int
    world_um, cell_id : ndarray
        From :func:`place_molecules`.
    params : SimulationParams
    rng : numpy.random.Generator

    Returns
    -------
    Spots
    bit_factor : ndarray, shape (n_bits,)
        Fixed brightness factor of each bit (mean 1 over bits on average).
    """
    n = len(world_um)
    n_bits = codebook.shape[1]
    global_profile, type_profiles = expression_profiles(n_genes, rng)
    seed_of_cell = np.zeros(cells.n_cells + 1, dtype=np.int64)
    has_cell = cells.cell_id > 0
    seed_of_cell[cells.cell_id[has_cell]] = np.flatnonzero(has_cell)
    # Profile of each molecule: its cell's type, or the global one (last row) outside cells.
    profiles = np.vstack([type_profiles, global_profile[None, :]])
    profile_of = np.where(cell_id > 0, cells.cell_type[seed_of_cell[cell_id]], len(type_profiles))
    cumulative = np.cumsum(profiles, axis=1)
    u = rng.random(n)
    barcode = (u[:, None] * cumulative[profile_of, -1:] >= cumulative[profile_of]).sum(axis=1)
    barcode = np.minimum(barcode, n_genes - 1).astype(np.int32)
    photons = params.spot_photons * _lognormal_unit_mean(rng, params.spot_brightness_cv, n)
    bit_factor = _lognormal_unit_mean(rng, params.bit_brightness_cv, n_bits)
    spot_bit = _lognormal_unit_mean(rng, params.spot_bit_brightness_cv, (n, n_bits))
    on = codebook[barcode].astype(bool)
    dropped = on & (rng.random((n, n_bits)) < params.bit_dropout_rate)
    bit_photons = np.where(on & ~dropped, photons[:, None] * bit_factor[None, :] * spot_bit, 0.0)
    weights = np.left_shift(np.int64(1), np.arange(n_bits, dtype=np.int64))
    dropped_mask = (dropped.astype(np.int64) * weights).sum(axis=1) if n_bits <= 62 else np.zeros(n, np.int64)
    spots = Spots(world_um, cell_id, barcode, photons, bit_photons, dropped_mask.astype(np.int64))
    return spots, bit_factor


def place_beads(world_lo_um, world_hi_um, section_z_um, spacing_um, rng):
    """Fiducial beads on a jittered lateral grid, ``spacing_um`` apart on average, at random depths.

    A jittered grid rather than a Poisson process keeps every region of a
    tile within about one spacing of a bead, as bead fiducials are prepared
    to be, while no two beads sit closer than 0.4 spacing laterally.

    Parameters
    ----------
    world_lo_um, world_hi_um : sequence of 3 float
        Box to fill (only y and x are used laterally).
    section_z_um : tuple of 2 float
        Depth range of the beads.
    spacing_um : float
    rng : numpy.random.Generator

    Returns
    -------
    ndarray of float64, shape (n, 3)
        World positions (z, y, x) in µm.
    """
    axes = [np.arange(lo, hi + spacing_um, spacing_um) for lo, hi in zip(world_lo_um[1:], world_hi_um[1:])]
    yy, xx = np.meshgrid(*axes, indexing="ij")
    n = yy.size
    jitter = rng.uniform(-0.3, 0.3, size=(n, 2)) * spacing_um
    z = rng.uniform(section_z_um[0], section_z_um[1], size=n)
    return np.column_stack([z, yy.ravel() + jitter[:, 0], xx.ravel() + jitter[:, 1]])

"""Per-round rigid shifts and smooth deformations between imaging rounds.

Convention (used everywhere in the simulator and its ground truth): a point at
position ``p`` (pixels, z y x, in tile t's round-0 image) appears in round r's
image at ``q = p + shift_r + deformation_r(w)`` where ``w`` is the point's
world position in µm (``w = true_stage_position_t + p * voxel_size``). The
deformation is defined in world coordinates so all tiles agree where they
overlap; round 0 has neither shift nor deformation.

The deformation is a random Fourier-feature Gaussian field: for component c,
``D_c(w) = sum_k a[c,k] cos(kappa_k . w) + b[c,k] sin(kappa_k . w)`` with
``kappa_k ~ Normal(0, 1/L^2)`` per axis and ``a, b ~ Normal(0, sd_c^2 / K)``,
which approximates a stationary Gaussian process with covariance
``sd_c^2 exp(-|dw|^2 / (2 L^2))``; it is exact, cheap to evaluate anywhere and
fully described by a few numbers in transforms.json.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_MODES = 32
CONVENTION = (
    "A point at position p (pixels z, y, x, in tile t's round-0 image; pixel centres at integer "
    "coordinates) appears in round r's image at q = p + shift_zyx_px[r] + deformation_r(w), where "
    "w = true_stage_zyx_um[t] + p * voxel_size_zyx_um is its world position in um. Round 0 has no "
    "shift and no deformation. shift_zyx_px is the same for every tile of a round; deformation_r is "
    "defined in world coordinates, so tiles agree where they overlap."
)


@dataclass(frozen=True)
class Deformation:
    """Smooth displacement field D(w) in pixels, w in world µm.

    Attributes
    ----------
    wavevectors_per_um : ndarray, shape (K, 3)
        Angular wave vectors kappa_k (rad/µm), (z, y, x).
    cos_amplitudes_px : ndarray, shape (3, K)
        a[c, k]: amplitude of ``cos(kappa_k . w)`` in component c (pixels).
    sin_amplitudes_px : ndarray, shape (3, K)
        b[c, k]: amplitude of ``sin(kappa_k . w)``.
    """

    wavevectors_per_um: np.ndarray
    cos_amplitudes_px: np.ndarray
    sin_amplitudes_px: np.ndarray

    @classmethod
    def random(cls, rng, amplitude_px, scale_um, voxel_size_zyx_um, n_modes=N_MODES):
        """Draw a field whose lateral components have RMS ``amplitude_px``.

        The displacement is isotropic in µm, so the z component in pixels is
        smaller by ``dy / dz``.
        """
        voxel = np.asarray(voxel_size_zyx_um, dtype=np.float64)
        kappa = rng.normal(size=(n_modes, 3)) / scale_um
        sd_px = amplitude_px * voxel[1] / voxel  # (z, y, x) RMS in pixels
        a = rng.normal(size=(3, n_modes)) * (sd_px[:, None] / np.sqrt(n_modes))
        b = rng.normal(size=(3, n_modes)) * (sd_px[:, None] / np.sqrt(n_modes))
        return cls(kappa, a, b)

    def at(self, world_um):
        """D at world points.

        Parameters
        ----------
        world_um : ndarray, shape (..., 3)

        Returns
        -------
        ndarray of float64, shape (..., 3)
            Displacement (z, y, x) in pixels.
        """
        world_um = np.asarray(world_um, dtype=np.float64)
        phase = world_um.reshape(-1, 3) @ self.wavevectors_per_um.T
        out = np.cos(phase) @ self.cos_amplitudes_px.T + np.sin(phase) @ self.sin_amplitudes_px.T
        return out.reshape(world_um.shape)

    def on_grid(self, origin_um, voxel_size_zyx_um, shape_zyx):
        """D on a regular voxel grid, evaluated exactly with separable complex exponentials.

        Parameters
        ----------
        origin_um : sequence of 3 float
            World position of voxel (0, 0, 0).
        voxel_size_zyx_um : sequence of 3 float
        shape_zyx : tuple of 3 int

        Returns
        -------
        ndarray of float32, shape (3, Z, Y, X)
        """
        origin = np.asarray(origin_um, dtype=np.float64)
        voxel = np.asarray(voxel_size_zyx_um, dtype=np.float64)
        kappa = self.wavevectors_per_um
        axes = [np.exp(1j * np.outer(kappa[:, a], np.arange(n) * voxel[a])) for a, n in enumerate(shape_zyx)]
        # a cos(t) + b sin(t) = Re((a - i b) e^{it}), t = kappa . (origin + offset)
        complex_amp = (self.cos_amplitudes_px - 1j * self.sin_amplitudes_px) * np.exp(1j * kappa @ origin)[None, :]
        nz, ny, nx = shape_zyx
        out = np.empty((3, nz, ny, nx), dtype=np.float32)
        zy = axes[0][:, :, None] * axes[1][:, None, :]  # (K, Z, Y)
        for c in range(3):
            m = (complex_amp[c][:, None, None] * zy).reshape(len(kappa), nz * ny)
            out[c] = (m.T @ axes[2]).real.reshape(nz, ny, nx)
        return out

    def to_json(self):
        return {
            "wavevectors_per_um": self.wavevectors_per_um.tolist(),
            "cos_amplitudes_px": self.cos_amplitudes_px.tolist(),
            "sin_amplitudes_px": self.sin_amplitudes_px.tolist(),
        }

    @classmethod
    def from_json(cls, d):
        return cls(
            np.asarray(d["wavevectors_per_um"], dtype=np.float64),
            np.asarray(d["cos_amplitudes_px"], dtype=np.float64),
            np.asarray(d["sin_amplitudes_px"], dtype=np.float64),
        )


@dataclass(frozen=True)
class RoundTransform:
    """Rigid shift plus optional deformation of one round relative to round 0."""

    round_index: int
    shift_px: np.ndarray
    deformation: Deformation | None

    def displacement(self, world_um):
        """``shift + D(w)`` in pixels at world points, shape (..., 3)."""
        world_um = np.asarray(world_um, dtype=np.float64)
        out = np.broadcast_to(self.shift_px, world_um.shape).astype(np.float64)
        if self.deformation is not None:
            out = out + self.deformation.at(world_um)
        return out

    def inverse_grid(self, tile_origin_um, voxel_size_zyx_um, q_start, shape_zyx, shift_px=None, coarse_step=None,
                     n_iter=5):
        """Round-0 positions ``p`` of the voxels ``q`` of a round-r frame (inverse transform).

        Solves ``q = p + shift + D(origin + p * voxel)`` by fixed-point iteration
        on a coarse grid (D is smooth, so the inverse displacement is too) and
        interpolates the inverse displacement linearly to every voxel.

        Parameters
        ----------
        tile_origin_um : sequence of 3 float
            True world position of the tile's voxel (0, 0, 0).
        voxel_size_zyx_um : sequence of 3 float
        q_start : sequence of 3 float
            Round-r pixel coordinate of the first voxel of the grid.
        shape_zyx : tuple of 3 int
            Grid shape.
        shift_px : sequence of 3 float, optional
            Use this shift instead of the round's (e.g. only its integer part,
            when the rest is applied elsewhere).
        coarse_step : sequence of 3 int, optional
            Coarse grid step in voxels; default from the deformation length scale.
        n_iter : int
            Fixed-point iterations (the error shrinks by about |grad D| each).

        Returns
        -------
        ndarray of float64, shape (3, Z, Y, X)
            p (z, y, x) in round-0 pixels.
        """
        q_start = np.asarray(q_start, dtype=np.float64)
        shape_zyx = tuple(int(n) for n in shape_zyx)
        shift = self.shift_px if shift_px is None else np.asarray(shift_px, dtype=np.float64)
        if self.deformation is None:
            u = np.broadcast_to(-shift.reshape(3, 1, 1, 1), (3,) + shape_zyx)
        else:
            voxel = np.asarray(voxel_size_zyx_um, dtype=np.float64)
            origin = np.asarray(tile_origin_um, dtype=np.float64)
            if coarse_step is None:
                # Linear interpolation errs by ~ amplitude * (|kappa| h)^2 / 8; four
                # coarse points per correlation length keep that near 0.01 px.
                kappa_rms = np.sqrt(np.mean(self.deformation.wavevectors_per_um**2))
                length_um = 1.0 / max(kappa_rms, 1e-12)
                coarse_step = np.clip(np.floor(length_um / 4.0 / voxel), 1, 16).astype(int)
            step = np.asarray(coarse_step, dtype=np.int64)
            n_coarse = [int(np.ceil((n - 1) / s)) + 1 for n, s in zip(shape_zyx, step)]
            axes = [q_start[a] + np.arange(n_coarse[a]) * step[a] for a in range(3)]
            q = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)  # (..., 3)
            p = q - shift
            for _ in range(n_iter):
                p = q - shift - self.deformation.at(origin + p * voxel)
            u_coarse = np.moveaxis(p - q, -1, 0)
            u = _upsample_linear(u_coarse, step, shape_zyx)
        grids = [q_start[a] + np.arange(shape_zyx[a], dtype=np.float64) for a in range(3)]
        p = np.empty((3,) + shape_zyx, dtype=np.float64)
        p[0] = u[0] + grids[0][:, None, None]
        p[1] = u[1] + grids[1][None, :, None]
        p[2] = u[2] + grids[2][None, None, :]
        return p


def _interpolation_matrix(n_fine, step, n_coarse):
    """(n_fine, n_coarse) weights of linear interpolation from points ``j * step`` to ``0 .. n_fine - 1``."""
    x = np.arange(n_fine, dtype=np.float64) / step
    j = np.minimum(np.floor(x).astype(np.int64), n_coarse - 2) if n_coarse > 1 else np.zeros(n_fine, np.int64)
    w = np.zeros((n_fine, n_coarse))
    if n_coarse == 1:
        w[:, 0] = 1.0
        return w
    frac = x - j
    w[np.arange(n_fine), j] = 1.0 - frac
    w[np.arange(n_fine), j + 1] = frac
    return w


def _upsample_linear(coarse, step, shape_zyx):
    """Trilinear interpolation of (C, z, y, x) coarse samples at ``j * step`` onto a full grid.

    Done as three small matrix products (separable), far cheaper than a
    general resampler for this smooth field.
    """
    out = coarse
    for axis in range(3):
        w = _interpolation_matrix(shape_zyx[axis], int(step[axis]), coarse.shape[1 + axis])
        out = np.moveaxis(np.tensordot(w, np.moveaxis(out, 1 + axis, 0), axes=(1, 0)), 0, 1 + axis)
    return np.ascontiguousarray(out)


def make_round_transforms(n_rounds, max_shift_zyx_px, amplitude_px, scale_um, voxel_size_zyx_um, rng):
    """Round 0: identity; round r >= 1: uniform shift in +-max_shift plus a deformation.

    Parameters
    ----------
    n_rounds : int
    max_shift_zyx_px : sequence of 3 float
    amplitude_px : float
        RMS lateral deformation in pixels (0: no deformation).
    scale_um : float
        Correlation length of the deformation.
    voxel_size_zyx_um : sequence of 3 float
    rng : numpy.random.Generator

    Returns
    -------
    list of RoundTransform
    """
    max_shift = np.asarray(max_shift_zyx_px, dtype=np.float64)
    out = [RoundTransform(0, np.zeros(3), None)]
    for r in range(1, n_rounds):
        shift = rng.uniform(-1.0, 1.0, size=3) * max_shift
        deformation = None
        if amplitude_px > 0:
            deformation = Deformation.random(rng, amplitude_px, scale_um, voxel_size_zyx_um)
        out.append(RoundTransform(r, shift, deformation))
    return out


def evaluate_deformation(transforms, round_index, world_um):
    """Deformation of a round at world points, from a parsed ``transforms.json``.

    Parameters
    ----------
    transforms : dict
        Content of ``ground_truth/transforms.json``.
    round_index : int
    world_um : array_like, shape (..., 3)
        World positions (z, y, x) in µm of points in the round-0 frame.

    Returns
    -------
    ndarray, shape (..., 3)
        deformation_r(w) in pixels (add ``shift_zyx_px`` for the full displacement).
    """
    world_um = np.asarray(world_um, dtype=np.float64)
    entry = transforms["rounds"][int(round_index)]
    if entry.get("deformation") is None:
        return np.zeros(world_um.shape)
    return Deformation.from_json(entry["deformation"]).at(world_um)

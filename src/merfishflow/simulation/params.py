"""Parameters of a simulated MERFISH experiment, validated on construction."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from ..errors import InputError

# Fiducial first, then the readout channels in the order they are stored in
# the TIFFs; wavelengths (excitation, emission) in µm.
FIDUCIAL_CHANNEL = ("polyDT", 0.488, 0.520)
# What the fiducial channel shows: a polyDT stain of the cells, or sparse beads.
FIDUCIAL_KINDS = ("polydt", "beads")
# How the images are blurred: the widefield model the pipeline also uses, or a
# tighter Gaussian written to raw_data as the experiment's measured PSF.
PSF_KINDS = ("widefield", "gaussian")
READOUT_CHANNELS = (
    ("readout_561", 0.561, 0.590),
    ("readout_647", 0.647, 0.680),
    ("readout_750", 0.750, 0.780),
)


@dataclass(frozen=True)
class SimulationParams:
    """Everything that defines a simulated experiment; same params + seed = same bytes.

    See ``docs/simulator.md`` for the meaning, unit and valid range of every
    field. Sequences are stored as tuples; construction validates every field
    and raises :class:`~merfishflow.errors.InputError` naming the field.
    """

    seed: int = 0
    n_tiles_yx: tuple[int, int] = (1, 2)
    n_rounds: int = 8
    n_readout_channels: int = 2
    image_shape_zyx: tuple[int, int, int] = (12, 128, 128)
    voxel_size_zyx_um: tuple[float, float, float] = (0.31, 0.108, 0.108)
    tile_overlap_fraction: float = 0.2
    n_genes: int = 20
    n_blanks: int = 5
    codeword_weight: int = 4
    min_hamming_distance: int = 4
    numerical_aperture: float = 1.30
    immersion_refractive_index: float = 1.40
    sample_refractive_index: float = 1.40
    cell_radius_um: float = 3.5
    spots_per_cell: float = 30.0
    fraction_spots_outside_cells: float = 0.1
    spot_photons: float = 4000.0
    spot_brightness_cv: float = 0.3
    bit_brightness_cv: float = 0.2
    spot_bit_brightness_cv: float = 0.15
    bit_dropout_rate: float = 0.02
    background_photons: float = 20.0
    fiducial_photons: float = 1000.0
    max_shift_zyx_px: tuple[float, float, float] = (0.8, 3.0, 3.0)
    deformation_amplitude_px: float = 0.7
    deformation_scale_um: float = 4.0
    stage_error_sd_um: float = 0.3
    e_per_adu: float = 0.5
    offset_adu: float = 100.0
    fixed_pattern_sd_adu: float = 2.0
    read_noise_e: float = 1.5
    n_hot_pixels: int = 6
    deformation_field_max_mb: float = 64.0
    fiducial_kind: str = "polydt"
    bead_spacing_px: float = 40.0
    bead_photons: float = 20000.0
    psf_kind: str = "widefield"
    gaussian_psf_sigma_zyx_um: tuple[float, float, float] = (0.25, 0.09, 0.09)

    def __post_init__(self):
        for field in dataclasses.fields(self):
            kind = _KINDS[field.name]
            value = _coerce(field.name, getattr(self, field.name), kind)
            object.__setattr__(self, field.name, value)
        self._check_ranges()

    # ------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict) -> "SimulationParams":
        """Build from a plain mapping (e.g. parsed YAML/JSON); missing keys take defaults.

        Parameters
        ----------
        d : dict
            Field name -> value. Lists are accepted where tuples are expected.

        Returns
        -------
        SimulationParams

        Raises
        ------
        InputError
            If a key is not a parameter, or a value has the wrong type or range.
        """
        if d is None:
            return cls()
        if not isinstance(d, dict):
            raise InputError(f"simulation parameters must be a mapping of name -> value, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        for key in d:
            if key not in known:
                raise InputError(
                    f"simulation parameter {key!r} is unknown; expected one of: {', '.join(sorted(known))}"
                )
        return cls(**d)

    def to_dict(self) -> dict:
        """JSON-able dict (tuples become lists) that :meth:`from_dict` turns back into ``self``."""
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in _LATER_FIELDS and value == field.default:
                # Left out at their defaults, so experiments simulated before these
                # parameters existed keep the same parameter record (and are not re-simulated).
                continue
            out[field.name] = list(value) if isinstance(value, tuple) else value
        return out

    # ------------------------------------------------------------------
    @property
    def n_bits(self) -> int:
        """Number of readout bits: one per round and readout channel."""
        return self.n_rounds * self.n_readout_channels

    @property
    def n_tiles(self) -> int:
        return self.n_tiles_yx[0] * self.n_tiles_yx[1]

    @property
    def channels(self) -> list[tuple[str, str, float, float]]:
        """(name, role, excitation_um, emission_um) in TIFF channel order."""
        name, ex, em = FIDUCIAL_CHANNEL
        out = [(name, "fiducial", ex, em)]
        for name, ex, em in READOUT_CHANNELS[: self.n_readout_channels]:
            out.append((name, "readout", ex, em))
        return out

    def _check_ranges(self):
        def need(ok, name, expected):
            if not ok:
                raise InputError(f"simulation parameter {name}={getattr(self, name)!r}: expected {expected}")

        need(self.seed >= 0, "seed", "an integer >= 0")
        need(all(n >= 1 for n in self.n_tiles_yx), "n_tiles_yx", "two integers >= 1")
        need(self.n_rounds >= 1, "n_rounds", "an integer >= 1")
        need(1 <= self.n_readout_channels <= len(READOUT_CHANNELS), "n_readout_channels",
             f"an integer in 1..{len(READOUT_CHANNELS)}")
        need(self.n_bits <= 62, "n_rounds",
             "n_rounds * n_readout_channels <= 62 (dropped bits are stored in a 64-bit mask)")
        z, y, x = self.image_shape_zyx
        need(z >= 1 and y >= 8 and x >= 8, "image_shape_zyx", "(z >= 1, y >= 8, x >= 8)")
        need(all(v > 0 for v in self.voxel_size_zyx_um), "voxel_size_zyx_um", "three positive floats")
        need(math.isclose(self.voxel_size_zyx_um[1], self.voxel_size_zyx_um[2]), "voxel_size_zyx_um",
             "equal y and x pixel sizes (the PSF model needs square pixels)")
        need(0 <= self.tile_overlap_fraction < 0.9, "tile_overlap_fraction", "a float in [0, 0.9)")
        need(self.n_genes >= 1, "n_genes", "an integer >= 1")
        need(self.n_blanks >= 0, "n_blanks", "an integer >= 0")
        need(1 <= self.codeword_weight <= self.n_bits, "codeword_weight",
             f"an integer in 1..n_bits (= n_rounds * n_readout_channels = {self.n_bits})")
        need(self.min_hamming_distance >= 1, "min_hamming_distance", "an integer >= 1")
        need(self.immersion_refractive_index >= 1, "immersion_refractive_index", "a float >= 1")
        need(self.sample_refractive_index >= 1, "sample_refractive_index", "a float >= 1")
        need(0 < self.numerical_aperture < self.immersion_refractive_index, "numerical_aperture",
             f"a float in (0, immersion_refractive_index={self.immersion_refractive_index})")
        need(self.cell_radius_um > 0, "cell_radius_um", "a float > 0")
        need(self.spots_per_cell >= 0, "spots_per_cell", "a float >= 0")
        need(0 <= self.fraction_spots_outside_cells < 1, "fraction_spots_outside_cells", "a float in [0, 1)")
        for name in ("spot_photons", "spot_brightness_cv", "bit_brightness_cv", "spot_bit_brightness_cv",
                     "background_photons", "fiducial_photons", "deformation_amplitude_px", "stage_error_sd_um",
                     "offset_adu", "fixed_pattern_sd_adu", "read_noise_e", "deformation_field_max_mb",
                     "bead_photons"):
            need(getattr(self, name) >= 0, name, "a float >= 0")
        need(0 <= self.bit_dropout_rate < 1, "bit_dropout_rate", "a float in [0, 1)")
        need(all(v >= 0 for v in self.max_shift_zyx_px), "max_shift_zyx_px", "three floats >= 0")
        need(self.bead_spacing_px >= 4, "bead_spacing_px", "a float >= 4 (pixels between neighbouring beads)")
        need(all(v > 0 for v in self.gaussian_psf_sigma_zyx_um), "gaussian_psf_sigma_zyx_um", "three floats > 0")
        need(self.deformation_scale_um > 0, "deformation_scale_um", "a float > 0")
        need(self.e_per_adu > 0, "e_per_adu", "a float > 0")
        need(0 <= self.n_hot_pixels <= y * x, "n_hot_pixels", f"an integer in 0..{y * x} (pixels per frame)")


# Parameters added after the first release (bead fiducial, measured PSF).
_LATER_FIELDS = frozenset({"fiducial_kind", "bead_spacing_px", "bead_photons", "psf_kind",
                           "gaussian_psf_sigma_zyx_um"})

# Field kinds: "int", "float", ("int", n) / ("float", n) for fixed-length tuples.
_KINDS = {
    "seed": "int",
    "n_tiles_yx": ("int", 2),
    "n_rounds": "int",
    "n_readout_channels": "int",
    "image_shape_zyx": ("int", 3),
    "voxel_size_zyx_um": ("float", 3),
    "tile_overlap_fraction": "float",
    "n_genes": "int",
    "n_blanks": "int",
    "codeword_weight": "int",
    "min_hamming_distance": "int",
    "numerical_aperture": "float",
    "immersion_refractive_index": "float",
    "sample_refractive_index": "float",
    "cell_radius_um": "float",
    "spots_per_cell": "float",
    "fraction_spots_outside_cells": "float",
    "spot_photons": "float",
    "spot_brightness_cv": "float",
    "bit_brightness_cv": "float",
    "spot_bit_brightness_cv": "float",
    "bit_dropout_rate": "float",
    "background_photons": "float",
    "fiducial_photons": "float",
    "max_shift_zyx_px": ("float", 3),
    "deformation_amplitude_px": "float",
    "deformation_scale_um": "float",
    "stage_error_sd_um": "float",
    "e_per_adu": "float",
    "offset_adu": "float",
    "fixed_pattern_sd_adu": "float",
    "read_noise_e": "float",
    "n_hot_pixels": "int",
    "deformation_field_max_mb": "float",
    "fiducial_kind": ("choice", FIDUCIAL_KINDS),
    "bead_spacing_px": "float",
    "bead_photons": "float",
    "psf_kind": ("choice", PSF_KINDS),
    "gaussian_psf_sigma_zyx_um": ("float", 3),
}


def _scalar(name, value, kind):
    expected = "an integer" if kind == "int" else "a number"
    # bool is an int subclass; a YAML "yes" must not silently become 1.
    if isinstance(value, (bool, np.bool_)):
        raise InputError(f"simulation parameter {name}={value!r}: expected {expected}")
    if kind == "int":
        if isinstance(value, (int, np.integer)):
            return int(value)
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            return int(value)
        raise InputError(f"simulation parameter {name}={value!r}: expected {expected}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise InputError(f"simulation parameter {name}={value!r}: expected a number") from None
    if not math.isfinite(out):
        raise InputError(f"simulation parameter {name}={value!r}: expected a finite number")
    return out


def _coerce(name, value, kind):
    if isinstance(kind, tuple) and kind[0] == "choice":
        if value not in kind[1]:
            raise InputError(f"simulation parameter {name}={value!r}: expected one of {', '.join(kind[1])}")
        return str(value)
    if isinstance(kind, tuple):
        scalar_kind, n = kind
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != n:
            raise InputError(f"simulation parameter {name}={value!r}: expected a list of {n} {scalar_kind}s")
        return tuple(_scalar(name, v, scalar_kind) for v in value)
    return _scalar(name, value, kind)

"""The raw_data contract (docs/raw_data.md): read and validate an experiment's metadata.

:func:`load_experiment` reads ``experiment.yaml``, ``codebook.csv``,
``exp_order.csv`` and ``stage_positions.csv`` and checks every rule of the
contract, raising :class:`~merfishflow.errors.InputError` with the file, the
key or row, and what was expected. The result, :class:`Experiment`, is the
manifest the workflow is built from: which tiles, rounds, bits and channels
exist, and how bits map to rounds and channels.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from dataclasses import dataclass

import numpy as np
from pathlib import Path

from ..errors import InputError
from .naming import bit_name, codebook_bit_column, index_of, round_name, tile_name
from .paths import ExperimentPaths, inside

FORMAT_VERSION = 1
CHANNEL_NAME = re.compile(r"[A-Za-z0-9_-]+")
ROLES = ("fiducial", "readout")


@dataclass(frozen=True)
class Channel:
    """One channel of the raw TIFFs, in storage order."""

    name: str
    role: str
    excitation_um: float
    emission_um: float
    psf: str | None = None


@dataclass(frozen=True)
class Experiment:
    """Validated metadata of one experiment: the manifest every stage is built from.

    Attributes
    ----------
    voxel_size_zyx_um, image_shape_zyx : tuple of 3
        Voxel size (µm) and shape of one channel of one tile and round.
    tile_overlap_fraction : float
    numerical_aperture, immersion_refractive_index, sample_refractive_index : float
    e_per_adu, offset_adu : float
        Camera gain and bias.
    dark_frame, hot_pixel_map : str or None
        Optional file names relative to raw_data/.
    channels : tuple of Channel
        In TIFF order; exactly one has role ``fiducial``.
    exp_order : tuple of tuple of int
        ``exp_order[round][k]`` is the bit imaged in the k-th readout channel.
    gene_ids : tuple of str
        Codebook rows, in file order (may be empty when only the structure is known).
    codewords : tuple of tuple of int
        0/1 codebook matrix, one row per gene_id.
    stage_positions_um : tuple of tuple of 3 float
        Stage position (z, y, x) of tile t's first voxel.
    """

    voxel_size_zyx_um: tuple
    image_shape_zyx: tuple
    tile_overlap_fraction: float
    numerical_aperture: float
    immersion_refractive_index: float
    sample_refractive_index: float
    e_per_adu: float
    offset_adu: float
    dark_frame: str | None
    hot_pixel_map: str | None
    channels: tuple
    exp_order: tuple
    gene_ids: tuple
    codewords: tuple
    stage_positions_um: tuple

    @classmethod
    def from_calibration(cls, attrs: dict) -> "Experiment":
        """The manifest that ``calibrations.zarr/.zattrs`` records (the init stage's copy of raw_data's
        metadata), so stages read it through the same typed accessors. Stage positions are not part of it
        (adding a tile does not rerun init): ``tiles`` is empty."""
        microscope, camera = attrs["microscope"], attrs["camera"]
        codebook = attrs["exp_codebook"]
        return cls(
            voxel_size_zyx_um=tuple(attrs["voxel_size_zyx_um"]), image_shape_zyx=tuple(attrs["image_shape_zyx"]),
            tile_overlap_fraction=attrs["tile_overlap_fraction"],
            numerical_aperture=microscope["numerical_aperture"],
            immersion_refractive_index=microscope["immersion_refractive_index"],
            sample_refractive_index=microscope["sample_refractive_index"],
            e_per_adu=camera["e_per_adu"], offset_adu=camera["offset_adu"], dark_frame=camera["dark_frame"],
            hot_pixel_map=camera["hot_pixel_map"],
            channels=tuple(Channel(c["name"], c["role"], c["excitation_um"], c["emission_um"])
                           for c in attrs["channels"]),
            exp_order=tuple(tuple(row) for row in attrs["exp_order"]["rounds"]),
            gene_ids=tuple(codebook["gene_id"]), codewords=tuple(tuple(w) for w in codebook["codewords"]),
            stage_positions_um=())

    # structure ---------------------------------------------------------------
    @property
    def tiles(self) -> list[str]:
        return [tile_name(t) for t in range(len(self.stage_positions_um))]

    @property
    def rounds(self) -> list[str]:
        return [round_name(r) for r in range(len(self.exp_order))]

    @property
    def n_bits(self) -> int:
        return sum(len(row) for row in self.exp_order)

    @property
    def bits(self) -> list[str]:
        return [bit_name(b) for b in range(1, self.n_bits + 1)]

    @property
    def fiducial_channel(self) -> int:
        return next(i for i, c in enumerate(self.channels) if c.role == "fiducial")

    @property
    def readout_channels(self) -> list[int]:
        return [i for i, c in enumerate(self.channels) if c.role == "readout"]

    def bits_of_round(self, round_: str) -> list[tuple[str, int]]:
        """``[(bit name, TIFF channel index), ...]`` imaged in a round."""
        row = self.exp_order[index_of(round_, "round")]
        return [(bit_name(b), c) for b, c in zip(row, self.readout_channels)]

    def round_of_bit(self, bit: str) -> str:
        number = index_of(bit, "bit")
        for r, row in enumerate(self.exp_order):
            if number in row:
                return round_name(r)
        raise InputError(f"{bit} is not imaged in any round of exp_order.csv")

    def stage_position(self, tile: str) -> list[float]:
        return list(self.stage_positions_um[index_of(tile, "tile")])

    @property
    def raw_bytes_per_tile_round(self) -> int:
        z, y, x = self.image_shape_zyx
        return 2 * len(self.channels) * z * y * x

    def summary(self) -> dict:
        """The manifest part of datastore.json: names only, JSON-able."""
        return {
            "tiles": self.tiles,
            "rounds": self.rounds,
            "bits": self.bits,
            "channels": [c.name for c in self.channels],
            "fiducial_channel": self.channels[self.fiducial_channel].name,
            "bit_linker": {bit: self.round_of_bit(bit) for bit in self.bits},
            "image_shape_zyx": list(self.image_shape_zyx),
            "voxel_size_zyx_um": list(self.voxel_size_zyx_um),
        }


def round_targets(paths: ExperimentPaths, experiment: Experiment, tile: str, round_: str) -> list[tuple]:
    """``[(group, TIFF channel index, bit number or None), ...]`` that one round of a tile writes: the fiducial
    group first, then every readout bit imaged in that round (:meth:`ExperimentPaths.round_groups`)."""
    bits = experiment.bits_of_round(round_)
    groups = paths.round_groups(tile, round_, [bit for bit, _ in bits])
    channels = [experiment.fiducial_channel] + [channel for _, channel in bits]
    numbers = [None] + [index_of(bit, "bit") for bit, _ in bits]
    return list(zip(groups, channels, numbers))


# ---------------------------------------------------------------------------------------------
def load_experiment(experiment_dir, *, check_tiffs=True) -> Experiment:
    """Read and validate ``<experiment_dir>/raw_data`` (docs/raw_data.md).

    Parameters
    ----------
    experiment_dir : str or Path
        The experiment folder (holding ``raw_data/``).
    check_tiffs : bool
        Also check that every tile's round TIFF and the optional camera files
        exist (cheap: no TIFF is opened; shapes are checked by the ingest job).

    Returns
    -------
    Experiment

    Raises
    ------
    InputError
        Naming the file, key or row at fault and what was expected.
    """
    paths = ExperimentPaths(experiment_dir)
    if not paths.raw.is_dir():
        raise InputError(f"{paths.raw}: raw_data folder not found (expected the layout of docs/raw_data.md)")
    meta = _read_experiment_yaml(paths.experiment_yaml)
    channels = meta["channels"]
    readouts = [c.name for c in channels if c.role == "readout"]
    exp_order = _read_exp_order(paths.exp_order_csv, readouts)
    n_bits = sum(len(row) for row in exp_order)
    gene_ids, codewords = _read_codebook(paths.codebook_csv, n_bits)
    stage = _read_stage_positions(paths.stage_positions_csv)
    experiment = Experiment(exp_order=exp_order, gene_ids=gene_ids, codewords=codewords,
                            stage_positions_um=stage, **meta)
    if check_tiffs:
        for name, key in ((experiment.dark_frame, "camera.dark_frame"), (experiment.hot_pixel_map, "camera.hot_pixel_map")):
            if name is not None and not paths.raw_file(name, f"{paths.experiment_yaml}: {key}").is_file():
                raise InputError(f"{paths.experiment_yaml}: {key} names {name!r}, but {paths.raw / name} does not exist")
        for i, channel in enumerate(experiment.channels):
            if channel.psf is not None:
                read_measured_psf(paths.raw / channel.psf, f"{paths.experiment_yaml}: channels[{i}].psf")
        missing = [paths.raw_tiff(t, r) for t in experiment.tiles for r in experiment.rounds
                   if not paths.raw_tiff(t, r).is_file()]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise InputError(f"{missing[0]}: raw TIFF not found{more}; stage_positions.csv lists "
                             f"{len(experiment.tiles)} tiles and exp_order.csv {len(experiment.rounds)} rounds, "
                             "each needs tileNNNN/roundNNNN.tif")
    return experiment


# experiment.yaml -------------------------------------------------------------------------------
# Every key of experiment.yaml (docs/raw_data.md): an unknown one is refused, because a misspelt optional
# key (sample_refractive_indx) would otherwise silently keep its default and change the results.
KNOWN_KEYS = {
    "": ("format_version", "voxel_size_zyx_um", "image_shape_zyx", "tile_overlap_fraction", "microscope", "camera",
         "channels"),
    "microscope": ("numerical_aperture", "immersion_refractive_index", "sample_refractive_index"),
    "camera": ("e_per_adu", "offset_adu", "dark_frame", "hot_pixel_map"),
    "channels[]": ("name", "role", "excitation_um", "emission_um", "psf", "psf_voxel_size_zyx_um"),
}


def _refuse_unknown_keys(mapping, where, section):
    import difflib

    known = KNOWN_KEYS["channels[]" if section.startswith("channels[") else section]
    for key in mapping:
        if key not in known:
            name = f"{section}.{key}" if section else str(key)
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
            raise InputError(f"{where}: unknown key {name!r} ({hint}; see docs/raw_data.md)")


def _read_experiment_yaml(path: Path) -> dict:
    from .fileio import read_yaml

    if not path.is_file():
        raise InputError(f"{path}: not found (experiment.yaml is required, see docs/raw_data.md)")
    doc = read_yaml(path, what="experiment.yaml")
    where = str(path)
    _need(isinstance(doc, dict), where, "", "a mapping of keys (see docs/raw_data.md)", doc)
    _refuse_unknown_keys(doc, where, "")
    for section in ("microscope", "camera"):
        if isinstance(doc.get(section), dict):
            _refuse_unknown_keys(doc[section], where, section)
    version = doc.get("format_version")
    _need(version == FORMAT_VERSION, where, "format_version", f"{FORMAT_VERSION}", version)
    voxel = _numbers(doc, where, "voxel_size_zyx_um", 3, float, lambda v: v > 0, "3 positive numbers")
    if not math.isclose(voxel[1], voxel[2]):
        raise InputError(f"{where}: voxel_size_zyx_um={list(voxel)}: expected equal y and x pixel sizes")
    shape = _numbers(doc, where, "image_shape_zyx", 3, int, lambda v: v > 0, "3 positive integers")
    overlap = _number(doc, where, "tile_overlap_fraction", float, lambda v: 0 <= v < 0.9, "a number in [0, 0.9)")
    scope = _section(doc, where, "microscope")
    ri = _number(scope, where, "microscope.immersion_refractive_index", float, lambda v: v >= 1, "a number >= 1",
                 key="immersion_refractive_index")
    na = _number(scope, where, "microscope.numerical_aperture", float, lambda v: 0 < v < ri,
                 f"a number in (0, immersion_refractive_index={ri})", key="numerical_aperture")
    sample_ri = scope.get("sample_refractive_index", ri)
    sample_ri = _number({"v": sample_ri}, where, "microscope.sample_refractive_index", float, lambda v: v >= 1,
                        "a number >= 1", key="v")
    camera = _section(doc, where, "camera")
    gain = _number(camera, where, "camera.e_per_adu", float, lambda v: v > 0, "a number > 0", key="e_per_adu")
    offset = _number(camera, where, "camera.offset_adu", float, lambda v: v >= 0, "a number >= 0", key="offset_adu")
    files = {}
    for key in ("dark_frame", "hot_pixel_map"):
        value = camera.get(key)
        _need(value is None or isinstance(value, str), where, f"camera.{key}", "a file name or null", value)
        if value is not None:
            inside(path.parent, value, f"{where}: camera.{key}")
        files[key] = value
    channels = _read_channels(doc, where, voxel)
    return dict(voxel_size_zyx_um=voxel, image_shape_zyx=shape, tile_overlap_fraction=overlap,
                numerical_aperture=na, immersion_refractive_index=ri, sample_refractive_index=sample_ri,
                e_per_adu=gain, offset_adu=offset, dark_frame=files["dark_frame"],
                hot_pixel_map=files["hot_pixel_map"], channels=channels)


def _psf_entry(entry, where, key, voxel_size_zyx_um):
    """The optional measured-PSF file name of one channel; its declared voxel size must be the images'."""
    psf = entry.get("psf")
    _need(psf is None or isinstance(psf, str), where, f"{key}.psf", "a TIFF file name in raw_data/ or null", psf)
    declared = entry.get("psf_voxel_size_zyx_um")
    if declared is not None:
        _need(psf is not None, where, f"{key}.psf_voxel_size_zyx_um", "only together with psf", declared)
        ok = isinstance(declared, list) and len(declared) == 3 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in declared)
        _need(ok and all(math.isclose(float(v), float(w), rel_tol=1e-3) for v, w in zip(declared, voxel_size_zyx_um)),
              where, f"{key}.psf_voxel_size_zyx_um",
              f"the images' voxel_size_zyx_um {list(voxel_size_zyx_um)} (resample the PSF to it)", declared)
    if psf is not None:
        inside(Path(where).parent, psf, f"{where}: {key}.psf")
    return psf


def read_measured_psf(path, where):
    """A measured PSF TIFF as float32 (z, y, x), normalised to unit sum, or InputError naming the file.

    Expected: a 3D float or integer stack with odd sizes, finite and
    non-negative values, a positive sum, and its centre of mass within one
    voxel of the central voxel (else deconvolution would shift every spot).
    ``where`` names the experiment.yaml key that points at the file.
    """
    import tifffile

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: not found; {where} names it (a measured PSF TIFF, z, y, x)")
    try:
        psf = tifffile.imread(path)
    except (OSError, ValueError, tifffile.TiffFileError) as err:
        raise InputError(f"{path}: cannot be read as a TIFF ({err}); {where} names it") from None
    if psf.ndim != 3 or any(n % 2 == 0 for n in psf.shape):
        raise InputError(f"{path}: PSF shape {psf.shape}; expected a 3D (z, y, x) stack with odd sizes "
                         "(the PSF's centre on the central voxel)")
    if psf.dtype.kind not in "uif":
        raise InputError(f"{path}: PSF dtype {psf.dtype}; expected float32 (or integer) values")
    psf = psf.astype(np.float64)
    if not np.all(np.isfinite(psf)) or psf.min() < 0 or psf.sum() <= 0:
        raise InputError(f"{path}: PSF values must be finite and non-negative with a positive sum "
                         f"(min {np.nanmin(psf):.4g}, sum {np.nansum(psf):.4g}); subtract the background and clip at 0")
    psf /= psf.sum()
    centroid = np.array([np.sum(psf.sum(axis=tuple(a for a in range(3) if a != axis)) * np.arange(n))
                         for axis, n in enumerate(psf.shape)])
    offset = centroid - (np.asarray(psf.shape) - 1) / 2
    if np.any(np.abs(offset) > 1.0):
        raise InputError(f"{path}: PSF centre of mass is {np.round(offset, 2).tolist()} voxels (z, y, x) from the "
                         "central voxel; expected within 1 voxel (centre the bead before saving)")
    return psf.astype(np.float32)


def _read_channels(doc, where, voxel_size_zyx_um):
    entries = doc.get("channels")
    _need(isinstance(entries, list) and len(entries) >= 2, where, "channels",
          "a list of at least 2 channels (one fiducial, one or more readouts)", entries)
    channels = []
    for i, entry in enumerate(entries):
        key = f"channels[{i}]"
        _need(isinstance(entry, dict), where, key, "a mapping with name, role, excitation_um, emission_um", entry)
        _refuse_unknown_keys(entry, where, key)
        name = entry.get("name")
        _need(isinstance(name, str) and CHANNEL_NAME.fullmatch(name) is not None, where, f"{key}.name",
              "a name of letters, digits, '_' or '-'", name)
        role = entry.get("role")
        _need(role in ROLES, where, f"{key}.role", "'fiducial' or 'readout'", role)
        ex = _number(entry, where, f"{key}.excitation_um", float, lambda v: v > 0, "a number > 0", key="excitation_um")
        em = _number(entry, where, f"{key}.emission_um", float, lambda v: v > 0, "a number > 0", key="emission_um")
        channels.append(Channel(name, role, ex, em, _psf_entry(entry, where, key, voxel_size_zyx_um)))
    names = [c.name for c in channels]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise InputError(f"{where}: channels: name {duplicated[0]!r} is used twice; channel names must be unique")
    n_fiducial = sum(c.role == "fiducial" for c in channels)
    if n_fiducial != 1:
        raise InputError(f"{where}: channels: expected exactly one channel with role 'fiducial', found {n_fiducial}")
    return tuple(channels)


# CSV files -------------------------------------------------------------------------------------
def _read_csv(path: Path, what: str) -> tuple[list[str], list[list[str]]]:
    if not path.is_file():
        raise InputError(f"{path}: not found ({what} is required, see docs/raw_data.md)")
    # utf-8-sig: a byte-order mark, as spreadsheets write it, is not part of the first header name.
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [row for row in csv.reader(f) if row and any(cell.strip() for cell in row)]
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    if not rows:
        raise InputError(f"{path}: empty; expected a header line and one row per {what}")
    header = [h.strip() for h in rows[0]]
    body = [[cell.strip() for cell in row] for row in rows[1:]]
    for line, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise InputError(f"{path}: line {line} has {len(row)} fields, the header has {len(header)}")
    return header, body


def _int_cell(path, line, column, text):
    try:
        return int(text)
    except ValueError:
        raise InputError(f"{path}: line {line}, column {column!r}: {text!r} is not an integer") from None


def _read_codebook(path: Path, n_bits: int):
    header, body = _read_csv(path, "barcode")
    expected = ["gene_id"] + [codebook_bit_column(b) for b in range(1, n_bits + 1)]
    if header[:1] != ["gene_id"]:
        raise InputError(f"{path}: the first column must be 'gene_id', found {header[:1]}")
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:
        raise InputError(f"{path}: column {repeated[0]!r} appears {header.count(repeated[0])} times in the header; "
                         f"expected gene_id,{expected[1]}..{expected[-1]}, each once")
    if header != expected:
        raise InputError(f"{path}: has {len(header) - 1} bit columns {header[1:3]}..., but exp_order.csv images "
                         f"{n_bits} bits; expected the header gene_id,{expected[1]}..{expected[-1]}")
    if not body:
        raise InputError(f"{path}: no barcodes; expected one row per gene")
    gene_ids, codewords, seen, words = [], [], {}, {}
    for line, row in enumerate(body, start=2):
        gene = row[0]
        if not gene:
            raise InputError(f"{path}: line {line}: gene_id is empty")
        if not gene.isprintable():
            raise InputError(f"{path}: line {line}: gene_id {gene!r} contains a tab, newline or other control "
                             "character; gene_ids are written to tab-separated tables (counts/features.tsv.gz)")
        if gene in seen:
            raise InputError(f"{path}: line {line}: gene_id {gene!r} duplicates line {seen[gene]}; gene_ids must be unique")
        seen[gene] = line
        word = []
        for column, cell in zip(header[1:], row[1:]):
            if cell not in ("0", "1"):
                raise InputError(f"{path}: line {line}, column {column!r}: {cell!r}; expected 0 or 1")
            word.append(int(cell))
        if not any(word):
            raise InputError(f"{path}: line {line}: codeword of {gene!r} has no 1; every codeword needs at least one")
        if tuple(word) in words:
            first = words[tuple(word)]
            raise InputError(f"{path}: line {line}: gene_id {gene!r} has the same codeword as {gene_ids[first]!r} "
                             f"(line {first + 2}); a spot cannot tell them apart, every codeword must be unique")
        words[tuple(word)] = len(gene_ids)
        gene_ids.append(gene)
        codewords.append(tuple(word))
    return tuple(gene_ids), tuple(codewords)


def _read_exp_order(path: Path, readouts: list[str]):
    header, body = _read_csv(path, "round")
    expected = ["round"] + readouts
    if header != expected:
        raise InputError(f"{path}: header {','.join(header)!r}; expected {','.join(expected)!r} "
                         "(round, then the readout channels of experiment.yaml in order)")
    if not body:
        raise InputError(f"{path}: no rounds; expected one row per round")
    order, seen = [], {}
    for line, row in enumerate(body, start=2):
        r = _int_cell(path, line, "round", row[0])
        if r != len(order):
            raise InputError(f"{path}: line {line}: round {r}; expected round {len(order)} (rounds 0, 1, 2, ... in order)")
        bits = []
        for column, cell in zip(header[1:], row[1:]):
            b = _int_cell(path, line, column, cell)
            if b in seen:
                raise InputError(f"{path}: line {line}, column {column!r}: bit {b} is already imaged on line {seen[b]}; "
                                 "every bit must appear exactly once")
            seen[b] = line
            bits.append(b)
        order.append(tuple(bits))
    n_bits = len(seen)
    wrong = sorted(b for b in seen if not 1 <= b <= n_bits)
    if wrong:
        raise InputError(f"{path}: bit {wrong[0]} is outside 1..{n_bits}; with {n_bits} bits imaged, the bits must be "
                         f"numbered 1..{n_bits} like the codebook's columns")
    return tuple(order)


def _read_stage_positions(path: Path):
    header, body = _read_csv(path, "tile")
    expected = ["tile", "stage_z_um", "stage_y_um", "stage_x_um"]
    if header != expected:
        raise InputError(f"{path}: header {','.join(header)!r}; expected {','.join(expected)!r}")
    positions = {}
    for line, row in enumerate(body, start=2):
        t = _int_cell(path, line, "tile", row[0])
        if t < 0:
            raise InputError(f"{path}: line {line}: tile {t} is negative; tiles are numbered 0..T-1")
        if t in positions:
            raise InputError(f"{path}: line {line}: tile {t} is listed twice")
        values = []
        for column, cell in zip(header[1:], row[1:]):
            try:
                v = float(cell)
            except ValueError:
                raise InputError(f"{path}: line {line}, column {column!r}: {cell!r} is not a number") from None
            if not math.isfinite(v):
                raise InputError(f"{path}: line {line}, column {column!r}: {cell!r} is not a finite number")
            values.append(v)
        positions[t] = tuple(values)
    if not positions:
        raise InputError(f"{path}: no tiles; expected one row per tile")
    for t in range(len(positions)):
        if t not in positions:
            raise InputError(f"{path}: tile {t} is missing; tiles must be numbered 0..{len(positions) - 1} "
                             f"({tile_name(t)} has no stage position)")
    return tuple(positions[t] for t in range(len(positions)))


# small validators ------------------------------------------------------------------------------
def _need(ok, where, key, expected, value):
    if not ok:
        at = f" {key}" if key else ""
        raise InputError(f"{where}:{at} got {value!r}; expected {expected}")


def _section(doc, where, key):
    value = doc.get(key)
    _need(isinstance(value, dict), where, key, "a mapping", value)
    return value


def _convert(value, kind):
    if isinstance(value, bool):
        raise TypeError
    if kind is int:
        if isinstance(value, int):
            return value
        raise TypeError
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError
    return float(value)


def _number(doc, where, name, kind, valid, expected, *, key=None):
    value = doc.get(key or name)
    try:
        out = _convert(value, kind)
    except TypeError:
        raise InputError(f"{where}: {name} got {value!r}; expected {expected}") from None
    _need(valid(out), where, name, expected, value)
    return out


def _numbers(doc, where, name, n, kind, valid, expected):
    value = doc.get(name)
    if not isinstance(value, list) or len(value) != n:
        raise InputError(f"{where}: {name} got {value!r}; expected {expected}")
    try:
        out = tuple(_convert(v, kind) for v in value)
    except TypeError:
        raise InputError(f"{where}: {name} got {value!r}; expected {expected}") from None
    _need(all(valid(v) for v in out), where, name, expected, value)
    return out


# raw image files -------------------------------------------------------------------------------
def open_raw_tiff(path: Path, n_channels: int, shape_zyx):
    """Open one tile and round's TIFF after checking its header against the contract; the pixels are not read.

    The contract is ``C x Z`` planes of ``Y x X`` uint16 in channel-major order. Two layouts hold them: one
    grayscale page per plane (what :func:`merfishflow.io.fileio.write_tiff` writes), or pages of several
    planes stored as separate colour planes (what a plain ``tifffile.imwrite(path, data_czyx)`` writes when
    ``Z`` or ``C`` is 3 or 4). Checks the plane count, the page shape, the dtype and that every page's data
    lies inside the file (a truncated copy). ``merfishflow validate`` and the ingest job both call this, so
    what validate passes, the run accepts.

    Returns
    -------
    tif : tifffile.TiffFile
        Open; the caller closes it.
    planes_per_page : int

    Raises
    ------
    InputError
        The file is missing, empty, not a TIFF, truncated, or its planes, shape or dtype differ from the contract.
    """
    import tifffile

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: raw TIFF not found")
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"{path}: empty file (0 bytes); expected a TIFF of {n_channels} channels x "
                         f"{shape_zyx[0]} z-planes (see docs/raw_data.md)")
    # tifffile logs a warning per unreadable page; the one line below says it instead.
    log = logging.getLogger("tifffile")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        tif = tifffile.TiffFile(path)
    except (OSError, ValueError, tifffile.TiffFileError) as err:
        log.setLevel(level)
        raise InputError(f"{path}: cannot be read as a TIFF ({err})") from None
    planes_per_page = 1
    try:
        first = tif.pages.first
        if first.planarconfig == tifffile.PLANARCONFIG.SEPARATE and first.samplesperpixel > 1:
            planes_per_page = int(first.samplesperpixel)
        problem = _raw_tiff_problem(tif, size, n_channels, shape_zyx, planes_per_page)
    except (OSError, ValueError, IndexError, tifffile.TiffFileError) as err:
        problem = f"unreadable TIFF header ({err}); a truncated or damaged copy?"
    finally:
        log.setLevel(level)
    if problem:
        tif.close()
        raise InputError(f"{path}: {problem} (see docs/raw_data.md)")
    return tif, planes_per_page


def _raw_tiff_problem(tif, size, n_channels, shape_zyx, planes_per_page):
    z, y, x = shape_zyx
    pages = tif.pages
    n_pages = len(pages)
    first = pages.first
    n_planes = n_pages * planes_per_page
    layout = f"{n_pages} pages of {planes_per_page} planes" if planes_per_page > 1 else f"{n_pages} pages"
    unit = "planes" if planes_per_page > 1 else "pages"
    if n_planes != n_channels * z:
        if _next_page_offset(tif, pages[n_pages - 1]):
            return (f"truncated or damaged: {size} bytes, only {n_pages} of its pages can be read; expected "
                    f"{n_channels} channels x {z} z-planes = {n_channels * z} {unit}")
        if n_planes % z == 0:
            return f"{layout} = {n_planes // z} channels x {z} z-planes; experiment.yaml lists {n_channels} channels"
        return f"{layout}; expected {n_channels} channels x {z} z-planes = {n_channels * z} {unit}"
    page_yx = tuple(first.shape[-2:]) if planes_per_page > 1 else tuple(first.shape)
    if page_yx != (y, x):
        return f"pages of {tuple(first.shape)} pixels; expected (Y, X) = {(y, x)} from image_shape_zyx"
    if first.dtype != "uint16":
        return f"dtype {first.dtype}; expected uint16 camera counts"
    end = max(int(o) + int(c) for page in pages for o, c in zip(page.dataoffsets, page.databytecounts))
    if end > size:
        return f"truncated: {size} bytes, but its pages' data reach byte {end}"
    return None


def read_raw_planes(tif, start, stop, planes_per_page):
    """Planes ``start:stop`` (channel-major plane index) of a TIFF checked by :func:`open_raw_tiff`.

    Returns
    -------
    ndarray, shape (stop - start, Y, X)
    """
    first_page, last_page = start // planes_per_page, (stop - 1) // planes_per_page
    pages = tif.asarray(key=range(first_page, last_page + 1))
    planes = pages.reshape(-1, *pages.shape[-2:])
    offset = first_page * planes_per_page
    return planes[start - offset:stop - offset]

def _next_page_offset(tif, page) -> int:
    """Where the IFD of ``page`` says the next page is (0 = it is the last one)."""
    import struct

    fmt, fh = tif.tiff, tif.filehandle
    fh.seek(page.offset)
    n_tags = struct.unpack(fmt.tagnoformat, fh.read(fmt.tagnosize))[0]
    fh.seek(page.offset + fmt.tagnosize + n_tags * fmt.tagsize)
    return struct.unpack(fmt.offsetformat, fh.read(fmt.offsetsize))[0]


def read_camera_image(path: Path, key: str, shape_yx):
    """The dark frame or hot-pixel map named by ``camera.<key>``: one finite (Y, X) image."""
    import numpy as np
    import tifffile

    try:
        image = tifffile.imread(path)
    except (OSError, ValueError, tifffile.TiffFileError) as err:
        raise InputError(f"{path}: cannot be read as a TIFF ({err}); experiment.yaml camera.{key} names it") from None
    image = np.squeeze(image)
    if image.shape != tuple(shape_yx):
        raise InputError(f"{path}: shape {image.shape}; camera.{key} must be one (Y, X) = {tuple(shape_yx)} image")
    if not np.all(np.isfinite(image)):
        raise InputError(f"{path}: contains NaN or infinite values; camera.{key} must be finite numbers")
    return image


def check_raw_files(experiment: Experiment, experiment_dir) -> int:
    """Read every raw TIFF's header (pages, shape, dtype, length; not the pixels) and the camera images.

    Returns
    -------
    int
        The number of TIFFs checked.

    Raises
    ------
    InputError
        The first file that the ingest or init job would refuse.
    """
    paths = ExperimentPaths(experiment_dir)
    shape_yx = experiment.image_shape_zyx[1:]
    for name, key in ((experiment.dark_frame, "dark_frame"), (experiment.hot_pixel_map, "hot_pixel_map")):
        if name is not None:
            read_camera_image(paths.raw_file(name, f"camera.{key}"), key, shape_yx)
    n = 0
    for tile in experiment.tiles:
        for round_ in experiment.rounds:
            open_raw_tiff(paths.raw_tiff(tile, round_), len(experiment.channels), experiment.image_shape_zyx)[0].close()
            n += 1
    return n

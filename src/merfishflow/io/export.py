"""Exports of registered tiles: multi-page TIFF (ImageJ / OME) and SpaceTx (starfish) (docs/exports.md).

Functions here read the datastore (checked complete) and write finished files
atomically (temporary file, then ``os.replace``). Nothing written carries a
timestamp, host name or absolute path: the same datastore gives byte-identical
exports. The formats, axes, units and the bit → (round, channel) mapping are
described in ``docs/exports.md``.

- :func:`export_tile_tiff`: one tile's registered readout bits and/or fiducial
  rounds as one multi-page TIFF hyperstack (uint16, µm pixel size and z
  spacing, channel names), streamed plane by plane.
- :func:`export_spacetx`: one tile as a SpaceTx experiment that
  ``starfish.Experiment.from_json`` and ``starfish.ImageStack.from_path_or_url``
  open: rounds × readout channels × z-planes of 2-D TIFF tiles, in µm.
- :func:`export_starfish_codebook`: the codebook as starfish codebook JSON.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from . import datastore
from ..errors import InputError
from .fileio import atomic, write_text
from .naming import bit_name, index_of, round_name
from .paths import REGISTERED_DATA, ExperimentPaths

TIFF_KINDS = ("imagej", "ome")
TIFF_CONTENTS = ("readouts", "fiducials", "all")
FIDUCIAL_PREFIX = "polyDT"
# ImageJ files are classic TIFF (no BigTIFF). Above this size the ImageJ export
# is written "truncated" (one IFD, contiguous pixel data) like ImageJ itself
# writes large stacks: Fiji and tifffile read every plane, other readers see
# only the first. OME exports switch to BigTIFF instead.
CLASSIC_TIFF_MAX_BYTES = 2**32 - 2**25

SPACETX_EXPERIMENT_VERSION = "5.0.0"
SPACETX_MANIFEST_VERSION = "0.1.0"
SPACETX_TILESET_VERSION = "0.1.0"
STARFISH_CODEBOOK_VERSION = "0.0.0"


# what is in a tile ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExportChannel:
    """One channel of an export: its name and the registered array it comes from."""

    name: str
    array: Path


def _calibration(paths: ExperimentPaths) -> dict:
    return datastore.read_marker(paths.calibrations)


def _check_tile(tile: str) -> str:
    index_of(tile, "tile")
    return tile


def tile_channels(experiment_dir, tile, what="readouts") -> list[ExportChannel]:
    """The channels :func:`export_tile_tiff` writes, in order.

    ``"fiducials"``: ``polyDT_round0000``, ``polyDT_round0001``, ... (every
    round's fiducial, registered to round 0); ``"readouts"``: ``bit001``,
    ``bit002``, ... (the codebook's bit order); ``"all"``: fiducials, then
    readouts.
    """
    if what not in TIFF_CONTENTS:
        raise InputError(f"what={what!r}; expected one of {', '.join(TIFF_CONTENTS)}")
    paths = ExperimentPaths(experiment_dir)
    _check_tile(tile)
    calibration = _calibration(paths)
    channels = []
    if what in ("fiducials", "all"):
        for r in range(len(calibration["exp_order"]["rounds"])):
            round_ = round_name(r)
            channels.append(ExportChannel(f"{FIDUCIAL_PREFIX}_{round_}",
                                          paths.fiducial_array(tile, round_, REGISTERED_DATA)))
    if what in ("readouts", "all"):
        for bit in calibration["exp_codebook"]["bits"]:
            channels.append(ExportChannel(bit, paths.readout_array(tile, bit, REGISTERED_DATA)))
    return channels


def _open_channels(channels):
    """Open every channel's array (checked complete) and check they share one uint16 (z, y, x) shape."""
    handles = [datastore.open_marked_array(c.array) for c in channels]
    shape = tuple(int(n) for n in handles[0].shape)
    for channel, handle in zip(channels, handles):
        if tuple(int(n) for n in handle.shape) != shape or len(shape) != 3:
            raise InputError(f"{channel.array}: shape {tuple(handle.shape)}; expected the (z, y, x) shape {shape} "
                             f"of {channels[0].array}")
        if handle.dtype.numpy_dtype != np.uint16:
            raise InputError(f"{channel.array}: dtype {handle.dtype.numpy_dtype}; expected uint16")
    return handles, shape


def _inputs_digest(channels) -> str:
    """sha256 over the markers of every exported array: names exactly what was read."""
    joined = "".join(f"{c.name}:{datastore.marker_digest(c.array)}\n" for c in channels)
    return hashlib.sha256(joined.encode()).hexdigest()


def _placement(paths: ExperimentPaths, tile: str, *, required: bool):
    """The tile's ``global_registration`` attributes, or None when optional and not (yet) written."""
    group = paths.global_registration(tile)
    if not required and not (group / datastore.MARKER).exists():
        return None
    return datastore.read_marker(group)


# multi-page TIFF --------------------------------------------------------------------------------
def export_tile_tiff(experiment_dir, tile, out_path, *, kind="imagej", what="readouts") -> Path:
    """Write one registered tile as a multi-page uint16 TIFF hyperstack.

    Parameters
    ----------
    experiment_dir : str or Path
        The experiment folder (holding ``qi2labdatastore/``).
    tile : str
        ``"tile0000"``, ...
    out_path : str or Path
        The file to write (conventionally ``.tif`` for ImageJ, ``.ome.tif`` for OME).
    kind : {"imagej", "ome"}
        ``"imagej"``: an ImageJ hyperstack, axes **ZCYX** (ImageJ stores
        hyperstacks in TZCYX order only; channels vary fastest), with
        ``spacing`` (z step, µm), ``unit`` "um" and one slice label per plane
        (its channel name). ``"ome"``: an OME-TIFF, axes **CZYX**, with
        ``PhysicalSizeX/Y/Z`` in µm and ``Channel/@Name``.
    what : {"readouts", "fiducials", "all"}
        Channels: the readout bits (``bit001``, ...), the fiducial rounds
        (``polyDT_round0000``, ...), or both (fiducials first).

    Both kinds carry XResolution/YResolution = 1/pixel size (pixels per µm)
    with ResolutionUnit NONE (TIFF has no µm unit; the µm is in the ImageJ
    ``unit`` and the OME ``PhysicalSize*Unit``).
    The file is streamed plane by plane: memory stays about one (y, x) plane.

    Returns
    -------
    Path
        ``out_path``.
    """
    import tifffile

    if kind not in TIFF_KINDS:
        raise InputError(f"kind={kind!r}; expected one of {', '.join(TIFF_KINDS)}")
    paths = ExperimentPaths(experiment_dir)
    calibration = _calibration(paths)
    channels = tile_channels(paths.root, tile, what)
    handles, (nz, ny, nx) = _open_channels(channels)
    names = [c.name for c in channels]
    dz, dy, dx = (float(v) for v in calibration["voxel_size_zyx_um"])
    digest = _inputs_digest(channels)
    placement = _placement(paths, tile, required=False)
    provenance = {"software": f"merfishflow {__version__}", "tile": tile, "source": REGISTERED_DATA,
                  "channels": names, "voxel_size_zyx_um": [dz, dy, dx], "inputs_sha256": digest}
    if placement is not None:
        provenance["origin_zyx_um"] = [float(v) for v in placement["origin_zyx_um"]]
    nbytes = len(channels) * nz * ny * nx * 2

    def plane(c, z):
        return datastore.read_region(handles[c], z, channels[c].array)

    common = {"dtype": np.uint16, "photometric": "minisblack", "resolution": (1.0 / dx, 1.0 / dy),
              "resolutionunit": "NONE", "software": "merfishflow", "datetime": None}
    if kind == "imagej":
        shape, axes = (nz, len(channels), ny, nx), "ZCYX"
        pages = (plane(c, z) for z in range(nz) for c in range(len(channels)))
        options = dict(imagej=True, truncate=nbytes > CLASSIC_TIFF_MAX_BYTES, metadata={
            "axes": axes, "spacing": dz, "unit": "um",
            "Labels": [name for _ in range(nz) for name in names],
            "Info": json.dumps(provenance, sort_keys=True),
        })
    else:
        shape, axes = (len(channels), nz, ny, nx), "CZYX"
        pages = (plane(c, z) for c in range(len(channels)) for z in range(nz))
        # tifffile stamps OME-XML with a random UUID unless given one: derive it from the inputs.
        uid = uuid.UUID(bytes=hashlib.sha256(f"{digest}:{tile}:{what}".encode()).digest()[:16], version=5)
        options = dict(ome=True, bigtiff=nbytes > CLASSIC_TIFF_MAX_BYTES, metadata={
            "axes": axes, "UUID": f"urn:uuid:{uid}", "Creator": f"merfishflow {__version__}",
            "Name": f"{tile} {what}", "Description": json.dumps(provenance, sort_keys=True),
            "PhysicalSizeX": dx, "PhysicalSizeXUnit": "µm",
            "PhysicalSizeY": dy, "PhysicalSizeYUnit": "µm",
            "PhysicalSizeZ": dz, "PhysicalSizeZUnit": "µm",
            "Channel": {"Name": names},
        })

    def write(temp):
        tifffile.imwrite(temp, pages, shape=shape, **common, **options)

    return atomic(out_path, write)


def default_tiff_name(tile, *, kind="imagej", what="readouts") -> str:
    """``tile0000_readouts.tif`` (ImageJ) or ``tile0000_readouts.ome.tif`` (OME): names under ``exports/``."""
    return f"{tile}_{what}.ome.tif" if kind == "ome" else f"{tile}_{what}.tif"


# starfish / SpaceTx --------------------------------------------------------------------------------
def bit_round_channel(calibration: dict) -> dict:
    """``{bit name: (round index, channel index)}`` from ``exp_order``.

    The channel index is the readout channel's position in exp_order.csv's
    columns (the readout channels of experiment.yaml, in order), i.e. starfish's
    ``c`` axis; the round index is starfish's ``r`` axis.
    """
    mapping = {}
    for r, row in enumerate(calibration["exp_order"]["rounds"]):
        for c, bit in enumerate(row):
            mapping[bit_name(bit)] = (r, c)
    return mapping


def starfish_codebook(calibration: dict) -> dict:
    """The codebook as a starfish codebook document (format version 0.0.0)."""
    codebook = calibration["exp_codebook"]
    where = bit_round_channel(calibration)
    bits = codebook["bits"]
    missing = [b for b in bits if b not in where]
    if missing:
        raise InputError(f"calibrations.zarr: codebook bit {missing[0]} is not imaged in any round of exp_order")
    mappings = []
    for gene, word in zip(codebook["gene_id"], codebook["codewords"]):
        if len(word) != len(bits):
            raise InputError(f"calibrations.zarr: codeword of {gene!r} has {len(word)} bits; expected {len(bits)}")
        entries = sorted(where[bit] for bit, on in zip(bits, word) if on)
        mappings.append({"codeword": [{"r": r, "c": c, "v": 1} for r, c in entries], "target": gene})
    return {"version": STARFISH_CODEBOOK_VERSION, "mappings": mappings}


def _starfish_json(doc) -> str:
    # slicedimage's writer: 4-space indent, sorted keys, non-ASCII kept; we add a final newline.
    return json.dumps(doc, indent=4, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


def export_starfish_codebook(experiment_dir, out_path) -> Path:
    """Write the experiment's codebook as starfish codebook JSON (``Codebook.open_json`` reads it).

    Every codebook row (blanks included) becomes ``{"codeword": [{"r", "c", "v": 1}, ...],
    "target": gene_id}``, with one entry per bit set, placed at the bit's
    (round, channel) from exp_order (:func:`bit_round_channel`).
    """
    paths = ExperimentPaths(experiment_dir)
    return write_text(out_path, _starfish_json(starfish_codebook(_calibration(paths))))


@dataclass(frozen=True)
class SpaceTxExport:
    """Files written by :func:`export_spacetx`."""

    experiment: Path  # experiment.json (starfish.Experiment.from_json)
    primary_images: Path  # the FOV manifest (collection of one tile set)
    tileset: Path  # the tile set itself (starfish.ImageStack.from_path_or_url)
    codebook: Path  # codebook.json
    tiles: tuple  # every 2-D TIFF, in (r, c, z) order


def export_spacetx(experiment_dir, tile, out_dir) -> SpaceTxExport:
    """Write one registered tile as a SpaceTx experiment (the files starfish's exports write).

    Layout of ``out_dir``::

        experiment.json                         version 5.0.0: images.primary, codebook
        codebook.json                           :func:`export_starfish_codebook`
        primary_images.json                     FOV manifest 0.1.0: {tile: tile-set JSON}
        primary_images-<tile>.json              tile set 0.1.0 (what ImageStack.export writes)
        primary_images-<tile>-H<r>-C<c>-Z<z>.tiff   one uint16 (y, x) plane per round, channel, z

    Rounds are exp_order's rounds, channels the readout channels in
    exp_order's column order: tile ``(r, c, z)`` is plane ``z`` of the
    registered bit ``exp_order[r][c]``. Coordinates are µm in the global
    frame: ``xc = [x0, x0 + (X - 1)·dx]`` (first and last pixel centre, as
    starfish writes them), likewise ``yc``; ``zc = [z0 + z·dz] * 2``, where
    ``(z0, y0, x0)`` is the tile's ``global_registration/origin_zyx_um``.

    ``experiment.json`` is removed first and written last, so an export that
    was killed half-way has none. Files of an earlier export into the same
    folder that this one does not rewrite are left alone (use a fresh folder).

    Returns
    -------
    SpaceTxExport
    """
    import tifffile

    paths = ExperimentPaths(experiment_dir)
    _check_tile(tile)
    calibration = _calibration(paths)
    placement = _placement(paths, tile, required=True)
    rounds = calibration["exp_order"]["rounds"]
    columns = calibration["exp_order"]["columns"]
    if any(len(row) != len(columns) for row in rounds):
        raise InputError(f"{paths.calibrations}: every exp_order round must image one bit per readout channel "
                         f"({len(columns)}); SpaceTx needs a full round x channel grid")
    channels = [[ExportChannel(bit_name(b), paths.readout_array(tile, bit_name(b), REGISTERED_DATA)) for b in row]
                for row in rounds]
    flat = [c for row in channels for c in row]
    handles, (nz, ny, nx) = _open_channels(flat)
    handles = [handles[r * len(columns):(r + 1) * len(columns)] for r in range(len(rounds))]
    spacing = placement.get("spacing_zyx_um", calibration["voxel_size_zyx_um"])
    dz, dy, dx = (float(v) for v in spacing)
    z0, y0, x0 = (float(v) for v in placement["origin_zyx_um"])

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # experiment.json is written last: removed first, a killed export leaves none.
    (out_dir / "experiment.json").unlink(missing_ok=True)
    stem = f"primary_images-{tile}"
    tiles, tile_docs = [], []
    for r in range(len(rounds)):
        for c in range(len(columns)):
            for z in range(nz):
                name = f"{stem}-H{r}-C{c}-Z{z}.tiff"
                plane = datastore.read_region(handles[r][c], z, channels[r][c].array)
                path = atomic(out_dir / name, lambda p, a=plane: tifffile.imwrite(
                    p, a, photometric="minisblack", software="merfishflow", datetime=None))
                tiles.append(path)
                tile_docs.append({
                    "coordinates": {"xc": [x0, x0 + (nx - 1) * dx], "yc": [y0, y0 + (ny - 1) * dy],
                                    "zc": [z0 + z * dz, z0 + z * dz]},
                    "file": name,
                    "indices": {"c": c, "r": r, "z": z},
                    "sha256": datastore.file_digest(path),
                    "tile_format": "TIFF",
                    "tile_shape": {"x": nx, "y": ny},
                })
    extras = {"merfishflow": {
        "software": f"merfishflow {__version__}", "tile": tile, "source": REGISTERED_DATA, "units": "um",
        "channels": list(columns), "bits_rc": [[channels[r][c].name for c in range(len(columns))]
                                               for r in range(len(rounds))],
        "inputs_sha256": _inputs_digest(flat),
    }}
    tileset_doc = {
        "version": SPACETX_TILESET_VERSION,
        "dimensions": ["r", "c", "z", "y", "x"],
        "shape": {"r": len(rounds), "c": len(columns), "z": nz},
        "default_tile_shape": {"x": nx, "y": ny},
        "default_tile_format": "TIFF",
        "extras": extras,
        "tiles": tile_docs,
    }
    tileset = write_text(out_dir / f"{stem}.json", _starfish_json(tileset_doc))
    manifest = write_text(out_dir / "primary_images.json", _starfish_json({
        "version": SPACETX_MANIFEST_VERSION, "contents": {tile: tileset.name}, "extras": None}))
    codebook = export_starfish_codebook(paths.root, out_dir / "codebook.json")
    experiment = write_text(out_dir / "experiment.json", _starfish_json({
        "version": SPACETX_EXPERIMENT_VERSION, "images": {"primary": manifest.name},
        "codebook": codebook.name, "extras": {}}))
    return SpaceTxExport(experiment, manifest, tileset, codebook, tuple(tiles))

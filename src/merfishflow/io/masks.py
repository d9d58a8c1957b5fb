"""Versioned on-disk format of cell masks (``.mfmask``): write, read, dispatch by version.

One file holds the cells of one labelled volume (a tile, or a fused
experiment): a fixed binary preamble (magic bytes, format version, doctype),
a JSON header (volume shape, voxel size, origin in global µm, one record per
cell) and each cell's binary mask cropped to its bounding box. No pickle: the
format is fully specified in ``docs/masks.md`` and can be read from any
language.

* :func:`write_masks` writes the newest version (:data:`FORMAT_VERSION`),
  atomically (temp file + ``os.replace``) and deterministically (the same
  labels and arguments give the same bytes).
* :func:`read_masks` reads every version ever written: the preamble's
  version selects the reader in :data:`READERS`. A file that is not a mask
  file, is truncated, fails its checksum, or has a version this code does not
  know raises :class:`~merfishflow.errors.InputError` naming the file and
  the problem.

Versions
--------
1
    Masks as ``numpy.packbits`` bytes (big bit order, C order of the
    bounding box), uncompressed, no checksum (truncation is detected from the
    lengths in the header). Kept readable; :func:`_write_version` can still
    write it for test fixtures.
2 (current)
    Masks as zlib-compressed packbits bytes, and a trailing SHA-256 of every
    byte before it, so corruption anywhere in the file is detected.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import struct
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from ..errors import InputError
from .fileio import atomic

__all__ = ["CellMask", "DOCTYPE", "FORMAT_VERSION", "MaskSet", "READERS", "SUFFIX", "read_masks",
           "write_masks"]

MAGIC = b"\x89MFMASK\n"            # 8 bytes; the \x89 keeps text tools from taking it for text
DOCTYPE = "merfishflow.masks"
DOCTYPE_BYTES = 32                 # NUL-padded ASCII field of the preamble
# <8s magic> <uint32 version> <32s doctype> <uint64 JSON header length>, little-endian
PREAMBLE = struct.Struct("<8sI32sQ")
CHECKSUM_BYTES = 32                # SHA-256 (version >= 2)
FORMAT_VERSION = 2                 # what write_masks writes
SUFFIX = ".mfmask"
ZLIB_LEVEL = 6
# Above this largest id, bounding boxes come from np.unique instead of ndi.find_objects
# (whose output has one entry per id up to the largest).
_FIND_OBJECTS_MAX_ID = 10_000_000


# data model ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CellMask:
    """One cell: its binary mask cropped to its bounding box, and where the box sits.

    Attributes
    ----------
    cell_id : int
        Label of the cell in the volume (> 0).
    bbox_offset_zyx_px : tuple of 3 int
        Voxel index (z0, y0, x0) of the box's first voxel in the volume.
    mask : ndarray of bool, shape = the box's shape
        ``mask[i, j, k]`` is voxel ``(z0 + i, y0 + j, x0 + k)`` of the volume.
    centroid_zyx_px : tuple of 3 float
        Mean voxel index of the cell (pixel centres at integers).
    centroid_zyx_um : tuple of 3 float
        ``origin_zyx_um + centroid_zyx_px * voxel_size_zyx_um``: global µm.
    volume_voxels : int
    """

    cell_id: int
    bbox_offset_zyx_px: tuple
    mask: np.ndarray
    centroid_zyx_px: tuple
    centroid_zyx_um: tuple
    volume_voxels: int

    @property
    def bbox_shape_zyx(self):
        return tuple(int(n) for n in self.mask.shape)

    @property
    def slices(self):
        """Slices of the volume covered by the bounding box."""
        return tuple(slice(o, o + n) for o, n in zip(self.bbox_offset_zyx_px, self.mask.shape))

    def bbox_um(self, voxel_size_zyx_um, origin_zyx_um):
        """(min corner, max corner) of the box's voxel *centres* in global µm, z y x."""
        v = np.asarray(voxel_size_zyx_um, float)
        o = np.asarray(origin_zyx_um, float)
        lo = np.asarray(self.bbox_offset_zyx_px, float)
        hi = lo + np.asarray(self.mask.shape, float) - 1
        return tuple(o + lo * v), tuple(o + hi * v)


@dataclass(frozen=True)
class MaskSet:
    """The cells of one mask file (:func:`read_masks`).

    Attributes
    ----------
    cells : list of CellMask
        In increasing ``cell_id``.
    shape_zyx : tuple of 3 int
        Shape of the labelled volume.
    voxel_size_zyx_um, origin_zyx_um : tuple of 3 float
        Voxel size, and global µm position of voxel (0, 0, 0): voxel ``p`` is at
        ``origin_zyx_um + p * voxel_size_zyx_um``.
    tile : str or None
    version : int
        Format version of the file it was read from.
    metadata : dict
        Free JSON metadata given to :func:`write_masks` (e.g. segmentation parameters).
    """

    cells: list
    shape_zyx: tuple
    voxel_size_zyx_um: tuple
    origin_zyx_um: tuple
    tile: str | None = None
    version: int = FORMAT_VERSION
    metadata: dict = field(default_factory=dict)

    @property
    def n_cells(self):
        return len(self.cells)

    @property
    def cell_ids(self):
        return [c.cell_id for c in self.cells]

    def cell(self, cell_id):
        """The :class:`CellMask` of ``cell_id``; KeyError if there is none."""
        # Binary search: cells are in increasing id (a linear scan made merging tiles quadratic).
        k = bisect.bisect_left(self.cells, int(cell_id), key=lambda c: c.cell_id)
        if k < len(self.cells) and self.cells[k].cell_id == int(cell_id):
            return self.cells[k]
        raise KeyError(f"no cell {cell_id} in this mask set ({self.n_cells} cells)")

    def without_masks(self):
        """This set with every cell's ``mask`` dropped (None): ids, boxes, centroids and volumes only.

        For bookkeeping over many tiles (merging cells across an experiment),
        where holding every tile's unpacked masks would cost ~1.5 bytes per
        voxel of the whole experiment; :meth:`to_labels` then raises.
        """
        return replace(self, cells=[replace(c, mask=None) for c in self.cells])

    def to_labels(self):
        """The uint32 label volume (z, y, x) the file was written from, exactly."""
        if self.cells and self.cells[0].mask is None:
            raise ValueError("to_labels: this mask set was made without_masks(); read the file again")
        out = np.zeros(self.shape_zyx, dtype=np.uint32)
        for c in self.cells:
            view = out[c.slices]
            view[c.mask] = c.cell_id
        return out


def count_label_pairs(a, b):
    """Distinct ``(a[i], b[i])`` pairs of two non-negative label arrays and how often each occurs.

    Parameters
    ----------
    a, b : ndarray of int, same shape, values in [0, 2**32)

    Returns
    -------
    pairs : ndarray of int64, shape (2, n)
        Sorted by ``a`` then ``b``.
    counts : ndarray of int64, shape (n,)
    """
    a = np.asarray(a).reshape(-1)
    b = np.asarray(b).reshape(-1)
    if a.size == 0:
        return np.zeros((2, 0), np.int64), np.zeros(0, np.int64)
    # One 64-bit key per pair: np.unique on it is ~30x faster than np.unique(..., axis=1) on stacked rows.
    keys, counts = np.unique((a.astype(np.uint64) << np.uint64(32)) | b.astype(np.uint64), return_counts=True)
    pairs = np.stack([(keys >> np.uint64(32)).astype(np.int64), (keys & np.uint64(0xFFFFFFFF)).astype(np.int64)])
    return pairs, counts.astype(np.int64)


# validation ------------------------------------------------------------------------------------
def _triple(value, name, positive):
    try:
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        arr = np.full(0, np.nan)
    if arr.shape != (3,) or not np.all(np.isfinite(arr)) or (positive and np.any(arr <= 0)):
        kind = "3 positive finite numbers" if positive else "3 finite numbers"
        raise InputError(f"{name} must be {kind} (z, y, x), got {value!r}")
    return tuple(float(v) for v in arr)


def _check_labels(labels):
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise InputError(f"labels: expected a 3D (z, y, x) label volume, got shape {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise InputError(f"labels: expected an integer label volume, got dtype {labels.dtype}")
    if labels.size and labels.dtype.kind == "i" and labels.min() < 0:
        raise InputError("labels: negative labels are not allowed (0 is background)")
    if labels.size and int(labels.max()) > np.iinfo(np.uint32).max:
        raise InputError("labels: cell ids must fit in uint32")
    return labels


# encoding --------------------------------------------------------------------------------------
def _cell_records(labels, voxel_size, origin):
    """(records without offsets, packbits bytes per cell), cells in increasing id."""
    if labels.size == 0 or not labels.any():
        return [], []
    max_id = int(labels.max())
    if max_id <= _FIND_OBJECTS_MAX_ID:
        work, ids = labels, None
        boxes = ndi.find_objects(labels.astype(np.int64, copy=False) if labels.dtype == np.uint64 else labels)
    else:
        ids, inverse = np.unique(labels, return_inverse=True)
        work = inverse.reshape(labels.shape).astype(np.int64)
        if ids[0] == 0:
            boxes = ndi.find_objects(work)
        else:                               # no background voxel: shift so that 0 stays background
            work = work + 1
            boxes = ndi.find_objects(work)
            ids = np.concatenate([[0], ids])
    records, blobs = [], []
    v = np.asarray(voxel_size)
    o = np.asarray(origin)
    for index, box in enumerate(boxes):
        if box is None:
            continue
        value = index + 1
        cell_id = value if ids is None else int(ids[value])
        if cell_id == 0:
            continue
        mask = np.ascontiguousarray(work[box] == value)
        points = np.nonzero(mask)
        offset = np.array([s.start for s in box])
        centroid = np.array([p.mean() for p in points]) + offset
        records.append({
            "cell_id": int(cell_id),
            "bbox_offset_zyx_px": [int(s.start) for s in box],
            "bbox_shape_zyx": [int(s.stop - s.start) for s in box],
            "centroid_zyx_px": [float(c) for c in centroid],
            "centroid_zyx_um": [float(c) for c in o + centroid * v],
            "volume_voxels": int(points[0].size),
        })
        blobs.append(np.packbits(mask.reshape(-1), bitorder="big").tobytes())
    return records, blobs


def _preamble(version, header_bytes):
    return PREAMBLE.pack(MAGIC, version, DOCTYPE.encode("ascii").ljust(DOCTYPE_BYTES, b"\0"),
                         len(header_bytes))


def _header_json(header):
    return json.dumps(header, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _encode(version, labels, voxel_size, origin, tile, metadata):
    """The complete file content of ``version`` as bytes."""
    records, blobs = _cell_records(labels, voxel_size, origin)
    if version == 1:
        encoded, encoding = blobs, "packbits"
    elif version == 2:
        encoded, encoding = [zlib.compress(b, ZLIB_LEVEL) for b in blobs], "zlib(packbits)"
    else:
        raise InputError(f"cannot write mask format version {version}; writable versions: 1, 2")
    offset = 0
    for record, blob in zip(records, encoded):
        record["offset"] = offset
        record["length"] = len(blob)
        offset += len(blob)
    header = {
        "doctype": DOCTYPE,
        "format_version": version,
        "shape_zyx": [int(n) for n in labels.shape],
        "voxel_size_zyx_um": list(voxel_size),
        "origin_zyx_um": list(origin),
        "tile": tile,
        "n_cells": len(records),
        "encoding": encoding,
        "bit_order": "big",
        "data_bytes": offset,
        "metadata": metadata,
        "cells": records,
    }
    try:
        header_bytes = _header_json(header)
    except (TypeError, ValueError) as exc:
        raise InputError(f"metadata must be JSON-serialisable (no NaN or infinity): {exc}") from None
    body = _preamble(version, header_bytes) + header_bytes + b"".join(encoded)
    if version >= 2:
        body += hashlib.sha256(body).digest()
    return body


def _write_version(path, version, labels, voxel_size_zyx_um, origin_zyx_um, *, tile=None, metadata=None):
    """Write ``path`` in format ``version`` (any writable one): used for the test fixtures."""
    labels = _check_labels(labels)
    voxel_size = _triple(voxel_size_zyx_um, "voxel_size_zyx_um", positive=True)
    origin = _triple(origin_zyx_um, "origin_zyx_um", positive=False)
    if tile is not None and not isinstance(tile, str):
        raise InputError(f"tile must be a string such as 'tile0000' or None, got {tile!r}")
    data = _encode(version, labels, voxel_size, origin, tile, dict(metadata or {}))
    return atomic(path, lambda p: Path(p).write_bytes(data))


def write_masks(path, labels, voxel_size_zyx_um, origin_zyx_um, *, tile=None, metadata=None):
    """Write a label volume as a mask file of the current format version (atomic, deterministic).

    Parameters
    ----------
    path : str or Path
        Output file; ``.mfmask`` by convention. Written to a temporary file in
        the same folder, then moved into place.
    labels : ndarray of int, shape (z, y, x)
        0 = background, every other value a cell id (any ids < 2**32; kept as is,
        not relabelled).
    voxel_size_zyx_um : 3 floats
        Voxel size in µm.
    origin_zyx_um : 3 floats
        Global µm position of voxel (0, 0, 0) (e.g. the tile's registered
        ``origin_zyx_um``); pass zeros for tile-local coordinates.
    tile : str, optional
        Tile name (``tile0000``), or None for a fused volume.
    metadata : dict, optional
        JSON-able extra information (segmentation method and parameters,
        software version). Must not hold timestamps if the file is to be
        reproducible.

    Returns
    -------
    Path
    """
    return _write_version(path, FORMAT_VERSION, labels, voxel_size_zyx_um, origin_zyx_um, tile=tile,
                          metadata=metadata)


# decoding --------------------------------------------------------------------------------------
def _fail(path, problem):
    raise InputError(f"{path}: {problem}")


def _parse_header(path, data, version):
    end = PREAMBLE.size
    _, _, _, header_len = PREAMBLE.unpack_from(data, 0)
    if len(data) < end + header_len:
        _fail(path, f"truncated mask file: the JSON header needs {header_len} bytes after the "
                    f"{end}-byte preamble, the file has {len(data)} bytes in all")
    try:
        header = json.loads(data[end:end + header_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        _fail(path, f"corrupted mask file: the JSON header does not parse ({exc})")
    if not isinstance(header, dict) or header.get("format_version") != version:
        _fail(path, f"corrupted mask file: the JSON header's format_version does not match the preamble's {version}")
    for key in ("shape_zyx", "voxel_size_zyx_um", "origin_zyx_um", "cells", "data_bytes"):
        if key not in header:
            _fail(path, f"corrupted mask file: the JSON header has no '{key}'")
    return header, end + header_len


def _decode_cells(path, header, data, start, decompress):
    cells = []
    shape = tuple(int(n) for n in header["shape_zyx"])
    for rec in header["cells"]:
        lo, n = rec["offset"], rec["length"]
        blob = data[start + lo:start + lo + n]
        box = tuple(int(v) for v in rec["bbox_shape_zyx"])
        offset = tuple(int(v) for v in rec["bbox_offset_zyx_px"])
        if any(o < 0 or o + s > full for o, s, full in zip(offset, box, shape)):
            _fail(path, f"corrupted mask file: cell {rec['cell_id']}'s bounding box lies outside the volume {shape}")
        try:
            packed = decompress(blob)
        except zlib.error as exc:
            _fail(path, f"corrupted mask file: cell {rec['cell_id']}'s mask does not decompress ({exc})")
        count = int(np.prod(box))
        if len(packed) != (count + 7) // 8:
            _fail(path, f"corrupted mask file: cell {rec['cell_id']}'s mask has {len(packed)} bytes, "
                        f"expected {(count + 7) // 8} for a box of {box}")
        mask = np.unpackbits(np.frombuffer(packed, np.uint8), count=count, bitorder="big").astype(bool)
        cells.append(CellMask(
            cell_id=int(rec["cell_id"]),
            bbox_offset_zyx_px=offset,
            mask=mask.reshape(box),
            centroid_zyx_px=tuple(float(v) for v in rec["centroid_zyx_px"]),
            centroid_zyx_um=tuple(float(v) for v in rec["centroid_zyx_um"]),
            volume_voxels=int(rec["volume_voxels"]),
        ))
    return cells


def _mask_set(header, cells, version):
    return MaskSet(cells=cells, shape_zyx=tuple(int(n) for n in header["shape_zyx"]),
                   voxel_size_zyx_um=tuple(float(v) for v in header["voxel_size_zyx_um"]),
                   origin_zyx_um=tuple(float(v) for v in header["origin_zyx_um"]),
                   tile=header.get("tile"), version=version, metadata=header.get("metadata") or {})


def _read_v1(path, data):
    header, start = _parse_header(path, data, 1)
    expected = start + int(header["data_bytes"])
    if len(data) < expected:
        _fail(path, f"truncated mask file: {len(data)} bytes, the header describes {expected}")
    if len(data) > expected:
        _fail(path, f"corrupted mask file: {len(data) - expected} unexpected bytes after the last mask")
    return _mask_set(header, _decode_cells(path, header, data, start, bytes), 1)


def _read_v2(path, data):
    if len(data) < PREAMBLE.size + CHECKSUM_BYTES:
        _fail(path, f"truncated mask file: {len(data)} bytes, too short for a version-2 file")
    body, digest = data[:-CHECKSUM_BYTES], data[-CHECKSUM_BYTES:]
    if hashlib.sha256(body).digest() != digest:
        # Tell a short file from a damaged one when the header still parses.
        try:
            header, start = _parse_header(path, body, 2)
            expected = start + int(header["data_bytes"]) + CHECKSUM_BYTES
        except InputError:
            expected = None
        if expected is not None and len(data) < expected:
            _fail(path, f"truncated mask file: {len(data)} bytes, the header describes {expected}")
        _fail(path, "corrupted mask file: the SHA-256 checksum at the end does not match the content")
    header, start = _parse_header(path, body, 2)
    if len(body) != start + int(header["data_bytes"]):
        _fail(path, "corrupted mask file: the data section's length does not match the header")
    return _mask_set(header, _decode_cells(path, header, body, start, zlib.decompress), 2)


READERS = {1: _read_v1, 2: _read_v2}
"""Reader of every format version ever written: ``version -> reader(path, data) -> MaskSet``."""


def read_masks(path):
    """Read a mask file of any known version.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    MaskSet

    Raises
    ------
    InputError
        The file is missing, is not a merfishflow mask file (wrong magic bytes
        or doctype), is truncated or corrupted (lengths, checksum), or has a
        format version that no reader in :data:`READERS` handles (the message
        names the file, its version and the supported ones).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: mask file not found") from None
    if len(data) < len(MAGIC) or data[:len(MAGIC)] != MAGIC:
        _fail(path, f"not a merfishflow mask file (the first bytes are {data[:len(MAGIC)]!r}, "
                    f"expected {MAGIC!r})")
    if len(data) < PREAMBLE.size:
        _fail(path, f"truncated mask file: {len(data)} bytes, shorter than the {PREAMBLE.size}-byte preamble")
    _, version, doctype, _ = PREAMBLE.unpack_from(data, 0)
    doctype = doctype.rstrip(b"\0").decode("ascii", errors="replace")
    if doctype != DOCTYPE:
        _fail(path, f"not a merfishflow mask file: doctype {doctype!r}, expected {DOCTYPE!r}")
    reader = READERS.get(version)
    if reader is None:
        supported = ", ".join(str(v) for v in sorted(READERS))
        _fail(path, f"mask format version {version} is not supported by this merfishflow (it reads "
                    f"versions {supported}); upgrade merfishflow to read this file")
    return reader(path, data)


# test fixtures ---------------------------------------------------------------------------------
def _fixture_labels():
    """The tiny label volume of ``tests/data/masks/fixture_v*.mfmask``: (3, 5, 6), cells 1, 2, 7, 300."""
    labels = np.zeros((3, 5, 6), dtype=np.uint32)
    labels[0:2, 0:2, 0:3] = 1
    labels[0:3, 2:5, 0:2] = 2          # touches cell 1
    labels[1, 1:4, 3:6] = 7
    labels[2, 0, 5] = 300
    labels[2, 4, 5] = 300              # one cell in two pieces
    return labels


FIXTURE_VOXEL_SIZE = (0.31, 0.108, 0.108)
FIXTURE_ORIGIN = (1.5, -2.25, 10.0)


def _write_fixtures(folder):
    """Write ``fixture_v{N}.mfmask`` for every writable version into ``folder``.

    Run once when a version is added (``python -c "from merfishflow import masks;
    masks._write_fixtures('tests/data/masks')"``) and commit the new file; never
    regenerate the files of older versions: the tests read those committed
    bytes so that files written by old releases stay readable.
    """
    folder = Path(folder)
    out = []
    for version in (1, 2):
        out.append(_write_version(folder / f"fixture_v{version}{SUFFIX}", version, _fixture_labels(),
                                  FIXTURE_VOXEL_SIZE, FIXTURE_ORIGIN, tile="tile0003",
                                  metadata={"written_by": "merfishflow.io.masks._write_fixtures"}))
    return out

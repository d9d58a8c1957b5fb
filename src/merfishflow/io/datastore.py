"""The on-disk datastore (docs/architecture.md: the layout and the marker contract): zarr v2 arrays through tensorstore, JSON markers.

Every ``*.zarr`` folder is a zarr v2 group (``.zgroup``). Its ``.zattrs`` is
the completion marker of the job that owns the group: written last and
atomically, with ``complete: true``, the parameters, the software versions
and a digest of the inputs. Readers go through :func:`read_marker` /
:func:`open_array`, which refuse anything not marked complete.

Arrays are chunked by z-plane (one chunk = one ``(1, Y, X)`` plane, or the
last two axes for higher-dimensional arrays) and blosc-zstd compressed with
bit shuffle, single-threaded so that the bytes never depend on the machine.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import IncompleteDataError, InputError
from .fileio import canonical_json, write_text

ZARR_FORMAT = 2
# zstd level 3 (zstd's own default): it wrote in half level 5's time for under 1 % more bytes, reading the
# same (benchmarks/RESULTS.md, "the Wiener–Butterworth back projector").
COMPRESSOR = {"id": "blosc", "cname": "zstd", "clevel": 3, "shuffle": 2, "blocksize": 0}
MARKER = ".zattrs"
ARRAY_DIMENSIONS = "_ARRAY_DIMENSIONS"
ZYX = ("z", "y", "x")


def software_versions() -> dict:
    """Versions of the packages whose behaviour decides the bytes written."""
    from importlib.metadata import version

    versions = {"merfishflow": __version__}
    versions.update({name: version(name) for name in ("numpy", "scipy", "tensorstore", "tifffile")})
    return versions


def stage_record(stage: str, parameters: dict, inputs_sha256, **fields) -> dict:
    """The provenance every stage writes with its output: ``{stage, software, parameters, inputs_sha256}``
    plus the stage's own ``fields`` (docs/architecture.md, "The marker contract")."""
    return {"stage": stage, "software": software_versions(), "parameters": parameters,
            "inputs_sha256": inputs_sha256, **fields}


def combined_digest(digests) -> str:
    """One SHA-256 over several inputs' digests, in the order given."""
    return hashlib.sha256("".join(digests).encode()).hexdigest()


# groups and markers ----------------------------------------------------------------------------
def create_group(path) -> Path:
    """Make ``path`` a zarr v2 group (``.zgroup``) without touching its marker."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    zgroup = path / ".zgroup"
    text = canonical_json({"zarr_format": ZARR_FORMAT})
    if not zgroup.exists() or zgroup.read_text() != text:
        write_text(zgroup, text)
    return path


def remove_marker(path) -> None:
    """Delete a group's marker before rewriting it, so a crash leaves it incomplete."""
    try:
        os.remove(Path(path) / MARKER)
    except FileNotFoundError:
        pass


def write_marker(path, attrs: dict) -> Path:
    """Write a group's ``.zattrs`` atomically with ``complete: true``: call it last.

    Parameters
    ----------
    path : str or Path
        The group (``*.zarr`` folder) or array folder.
    attrs : dict
        Plain JSON attributes (no timestamps or host names: they would break
        byte-identical reruns).

    Returns
    -------
    Path
        The marker file.
    """
    body = dict(attrs)
    body["complete"] = True
    return write_text(Path(path) / MARKER, canonical_json(body))


def read_marker(path, *, require_complete=True) -> dict:
    """The attributes of a group, checked to be complete.

    Raises
    ------
    IncompleteDataError
        If the marker is missing, unreadable or lacks ``complete: true``:
        the job that owns ``path`` did not finish.
    """
    marker = Path(path) / MARKER
    try:
        attrs = json.loads(marker.read_text())
    except FileNotFoundError:
        raise IncompleteDataError(
            f"{marker}: missing; the job that writes {Path(path).name} has not finished (rerun the workflow)"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise IncompleteDataError(f"{marker}: not valid JSON ({err}); rerun the job that writes it: delete this "
                                  "file and rerun the workflow") from None
    if require_complete and attrs.get("complete") is not True:
        raise IncompleteDataError(f"{marker}: not marked complete; rerun the job that writes {Path(path).name}: "
                                  "delete this file and rerun the workflow")
    return attrs


def is_complete(path) -> bool:
    try:
        read_marker(path)
    except IncompleteDataError:
        return False
    return True


def marker_digest(path) -> str:
    """sha256 of a complete marker's bytes: how a downstream job names what it read."""
    read_marker(path)
    return hashlib.sha256((Path(path) / MARKER).read_bytes()).hexdigest()


def file_digest(path, block_bytes=1 << 24) -> str:
    """sha256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(block_bytes):
            digest.update(block)
    return digest.hexdigest()


# arrays ----------------------------------------------------------------------------------------
def _spec(path, shape=None, dtype=None):
    spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": str(Path(path).resolve())}}
    if shape is not None:
        # Write all-zero chunks too: a missing chunk then always means damage (check_chunks).
        spec["store_data_equal_to_fill_value"] = True
        shape = [int(n) for n in shape]
        chunks = [1] * (len(shape) - 2) + shape[-2:]
        spec["metadata"] = {
            "shape": shape,
            "chunks": chunks,
            "dtype": np.dtype(dtype).str,
            "compressor": COMPRESSOR,
            "order": "C",
            "fill_value": 0,
            "filters": None,
            "dimension_separator": ".",
        }
    return spec


_CONTEXTS = {}


def _context(threads=1):
    """A shared tensorstore context whose codec uses ``threads`` threads.

    Each z-plane chunk is compressed by one thread on its own, so the number
    of threads changes the speed, never the bytes. Jobs pass their Snakemake
    ``threads`` so a job never uses more cores than it asked the scheduler for.
    """
    import tensorstore as ts

    threads = max(1, int(threads))
    if threads not in _CONTEXTS:
        _CONTEXTS[threads] = ts.Context({"data_copy_concurrency": {"limit": threads},
                                         "file_io_concurrency": {"limit": max(2, threads)}})
    return _CONTEXTS[threads]


def create_array(path, shape, dtype, *, threads=1):
    """Create (or replace) a zarr v2 array chunked by z-plane; returns a tensorstore handle.

    Write planes or blocks with ``handle[z0:z1].write(block).result()``.
    """
    import tensorstore as ts

    return ts.open(_spec(path, shape, dtype), create=True, delete_existing=True,
                   context=_context(threads)).result()


def dimension_attrs(dims) -> dict:
    """The xarray convention for zarr v2 (``_ARRAY_DIMENSIONS``): how ``xarray.open_zarr`` names the axes."""
    return {ARRAY_DIMENSIONS: [str(d) for d in dims]}


def write_dimension_names(path, dims) -> Path:
    """Write the ``.zattrs`` of an array whose marker is its group's: only the axis names (written before
    that group marker, by the same job)."""
    return write_text(Path(path) / MARKER, canonical_json(dimension_attrs(dims)))


def write_marked_array(path, data, attrs: dict, *, threads=1, dims=ZYX) -> Path:
    """Write an array that is its own job's output: data first, then its ``.zattrs`` marker.

    The marker records the array's shape, dtype and chunks and its axis names
    (``_ARRAY_DIMENSIONS``, default z, y, x) next to ``attrs``;
    :func:`open_marked_array` checks shape and dtype.
    """
    path = Path(path)
    if len(dims) != data.ndim:
        raise ValueError(f"{path}: {len(dims)} dimension names for a {data.ndim}-D array")
    remove_marker(path)
    handle = create_array(path, data.shape, data.dtype, threads=threads)
    handle.write(np.ascontiguousarray(data)).result()
    body = dict(attrs)
    body.update(array_record(data))
    body.update(dimension_attrs(dims))
    return write_marker(path, body)


def write_array(path, data, dims=None) -> None:
    """Write a whole in-memory array (small arrays: calibrations) and its axis names (default: the last
    three are z, y, x; leading ones ``dim_0``, ...)."""
    handle = create_array(path, data.shape, data.dtype)
    handle.write(np.ascontiguousarray(data)).result()
    if dims is None:
        dims = [f"dim_{k}" for k in range(max(0, data.ndim - 3))] + list(ZYX[max(0, 3 - data.ndim):])
    write_dimension_names(path, dims)


# Arrays whose chunks may legitimately be all fill value (0), which tensorstore does not store:
# the known-hot-pixel plane of camera_noise_map without a hot-pixel map, and a flow-field
# component that is zero over a whole plane. A missing chunk of any other array is an error.


def check_chunks(path, marker_path=None) -> None:
    """Raise :class:`IncompleteDataError` naming the first chunk file of ``path`` that is missing.

    tensorstore reads a missing chunk back as the fill value (zeros) without complaint, so a chunk
    deleted after the job wrote it would silently become a plane of zeros. The pipeline writes every
    chunk, all-zero ones included (``store_data_equal_to_fill_value``), so every chunk of a
    complete array's grid must exist. Costs one directory listing.
    """
    path = Path(path)
    try:
        meta = json.loads((path / ".zarray").read_text())
        shape, chunks = [int(n) for n in meta["shape"]], [int(n) for n in meta["chunks"]]
        separator = meta.get("dimension_separator", ".")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise IncompleteDataError(f"{path / '.zarray'}: unreadable ({err}); the array was changed after it was "
                                  "written") from None
    grid = [-(-s // c) if c > 0 else 0 for s, c in zip(shape, chunks)]
    n_expected = int(np.prod(grid)) if grid else 1
    try:
        names = {entry.name for entry in os.scandir(path)}
    except OSError as err:
        raise IncompleteDataError(f"{path}: cannot be listed ({err})") from None
    missing = [key for key in (separator.join(str(i) for i in index) if index else "0" for index in np.ndindex(*grid))
               if key not in names]
    if missing:
        owner = marker_path if marker_path is not None else path / MARKER
        more = f" (and {len(missing) - 1} more of its {n_expected} chunks)" if len(missing) > 1 else ""
        raise IncompleteDataError(
            f"{path / missing[0]}: chunk file missing{more}; it was deleted after the job wrote the array "
            f"(it would read back as zeros). Delete {owner} and rerun the workflow to rewrite it"
        )


def _open_checked(path, expected: dict, marker_path=None):
    import tensorstore as ts

    try:
        handle = ts.open(_spec(path), open=True, read=True, context=_context()).result()
    except ValueError as err:
        raise IncompleteDataError(f"{path}: cannot be opened as a zarr array ({err})") from None
    if list(handle.shape) != list(expected["shape"]) or handle.dtype.numpy_dtype != np.dtype(expected["dtype"]):
        raise IncompleteDataError(
            f"{path}: shape {list(handle.shape)} / dtype {handle.dtype.numpy_dtype} differ from the marker's "
            f"{expected['shape']} / {expected['dtype']}; the array was changed after it was written"
        )
    check_chunks(path, marker_path)
    return handle


def open_array(group, name):
    """Open ``group/name`` for reading after checking the group's marker says complete.

    Parameters
    ----------
    group : str or Path
        A ``*.zarr`` group written by a pipeline job.
    name : str
        Array inside it (``camera_data``, ``corrected_data``, ...).

    Returns
    -------
    tensorstore.TensorStore
        Read with ``handle[...].read().result()``.
    """
    attrs = read_marker(group)
    arrays = attrs.get("arrays", {})
    if name not in arrays:
        raise InputError(f"{Path(group) / MARKER}: no array {name!r} recorded; it has {sorted(arrays)}")
    return _open_checked(Path(group) / name, arrays[name], Path(group) / MARKER)


def open_marked_array(path):
    """Open an array that is its own job's output: its ``.zattrs`` (with shape and dtype) is the marker."""
    return _open_checked(Path(path), read_marker(path))


def read_region(handle, index=(), what="array") -> np.ndarray:
    """``handle[index]`` as numpy; a damaged chunk raises :class:`IncompleteDataError` naming ``what``
    (tensorstore reports corrupt or truncated chunk files as a bare ValueError)."""
    try:
        return handle[index].read().result()
    except ValueError as err:
        raise IncompleteDataError(f"{what}: unreadable ({err}); delete its .zattrs and rerun the workflow to "
                                  "rewrite it") from None


def read_marked_array(path) -> np.ndarray:
    """The whole array at ``path`` (its own marker checked) as numpy."""
    handle = open_marked_array(path)
    try:
        return handle.read().result()
    except ValueError as err:
        raise IncompleteDataError(f"{path}: unreadable ({err}); rerun the job that writes it") from None


def read_array(group, name) -> np.ndarray:
    """The whole array ``group/name`` as numpy (checked complete); for small arrays and tests."""
    handle = open_array(group, name)
    try:
        return handle.read().result()
    except ValueError as err:
        raise IncompleteDataError(f"{Path(group) / name}: unreadable ({err}); rerun the job that writes it") from None


def array_record(data_or_handle) -> dict:
    """What a marker records about an array it describes: shape, dtype and chunks."""
    shape = [int(n) for n in data_or_handle.shape]
    dtype = data_or_handle.dtype
    dtype = dtype.numpy_dtype if hasattr(dtype, "numpy_dtype") else np.dtype(dtype)
    return {"shape": shape, "dtype": np.dtype(dtype).str, "chunks": [1] * (len(shape) - 2) + shape[-2:]}

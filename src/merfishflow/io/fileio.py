"""Deterministic, atomic file writers (temp file in the same folder + os.replace).

Nothing written here carries a timestamp, host name or absolute path, so the
same inputs always give byte-identical files; a reader never sees a half-written
file under its final name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


def _temp_path(path):
    # Same folder (os.replace must not cross file systems) and same suffix
    # (writers that look at the extension behave the same); the process id
    # keeps two writers of the same file (a crashed job and its rerun) apart.
    return path.with_name(f".tmp{os.getpid()}-{path.name}")


def atomic(path, write):
    """Call ``write(temp_path)``, then move the temp file onto ``path``.

    Parameters
    ----------
    path : str or Path
        Final file name.
    write : callable(Path)
        Writes the complete file at the given path.

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A writer killed between writing and renaming leaves its temp file; the
    # rerun (another pid) removes it so the folder ends as a clean run's.
    for stale in path.parent.glob(f".tmp*-{path.name}"):
        stale.unlink(missing_ok=True)
    temp = _temp_path(path)
    try:
        write(temp)
        os.replace(temp, path)
    except OSError as err:
        if err.filename is None:
            # A failed write (full disk) names no file; the caller's message must.
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
    finally:
        if temp.exists():
            temp.unlink()
    return path


def write_text(path, text):
    """Write UTF-8 text with ``\\n`` line endings."""
    return atomic(path, lambda p: p.write_bytes(text.encode("utf-8")))


def canonical_json(obj) -> str:
    """JSON text with sorted keys and a final newline: equal objects give equal bytes."""
    return json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"


def write_json(path, obj, *, sort_keys=False):
    """Pretty-printed JSON with a final newline; key order as given unless ``sort_keys``."""
    text = canonical_json(obj) if sort_keys else json.dumps(obj, indent=2) + "\n"
    return write_text(path, text)


def write_yaml(path, obj):
    """YAML in the given key order; mappings as blocks, lists of scalars inline (``[0.31, 0.108, 0.108]``)."""
    import yaml

    class _Dumper(yaml.SafeDumper):
        pass

    def _list(dumper, data):
        flow = all(not isinstance(v, (dict, list)) for v in data)
        return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)

    _Dumper.add_representer(list, _list)
    return write_text(path, yaml.dump(obj, Dumper=_Dumper, sort_keys=False, default_flow_style=False))


def write_csv(path, header, rows):
    """Plain comma-separated file; values are written with ``str``."""
    lines = [",".join(header)] + [",".join(str(v) for v in row) for row in rows]
    return write_text(path, "\n".join(lines) + "\n")


def write_tiff(path, data):
    """Multi-page grayscale TIFF, one ``Y x X`` page per plane (no date/time tag).

    ``photometric="minisblack"`` is explicit: left to itself, tifffile stores an
    array whose third-last axis has length 3 or 4 (a ``Z = 3`` stack) as RGB
    pages with that axis as colour samples.
    """
    import tifffile

    return atomic(path, lambda p: tifffile.imwrite(p, np.ascontiguousarray(data), photometric="minisblack"))


def write_parquet(path, table):
    """A pyarrow Table as Parquet (no pandas metadata)."""
    import pyarrow.parquet as pq

    return atomic(path, lambda p: pq.write_table(table, p))


def read_yaml(path, *, what="YAML file"):
    """Parse a YAML file, refusing a key given twice in one mapping (PyYAML keeps the last one silently).

    A UTF-8 byte-order mark (what spreadsheet and Windows editors write) is accepted.

    Raises
    ------
    InputError
        The file is missing, is not valid YAML, or repeats a key (named, with both lines).
    """
    import yaml

    from ..errors import InputError

    class _StrictLoader(yaml.SafeLoader):
        pass

    def _mapping(loader, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise InputError(f"{path}: line {line}: key {key!r} is given twice (first on line {seen[key]}); "
                                 "remove one")
            seen[key] = line
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    _StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"{path}: {what} not found") from None
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from None

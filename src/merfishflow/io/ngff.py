"""OME-NGFF (OME-Zarr 0.4) views of a tile: what napari-ome-zarr, ome-zarr-py, Fiji (MoBIE/n5-viewer),
QuPath and SpatialData open with physical scale (docs/datastore.md, "OME-Zarr view").

A view is one zarr v2 image group per tile, ``exports/ome_zarr/<tile>.ome.zarr``:

- arrays ``0``, ``1``, ... : a multiscale pyramid, uint16 ``(c, z, y, x)``, each
  level halving y and x (2 × 2 mean) until both are at most ``pyramid_max_px``;
  a tile that already fits has one level;
- ``multiscales`` axes ``c`` (channel) and ``z, y, x`` in micrometre; each level's
  ``scale`` is the voxel size (times 2 in y, x per level) and its
  ``translation`` the tile's global origin (``global_registration``), so
  tiles open in place next to each other;
- ``omero`` channel names and display windows;
- ``labels/cells``: the tile's cells as global ``cell_id`` s (uint32,
  ``(1, z, y, x)``, same pyramid, nearest-neighbour downsampling).

The group's ``.zattrs`` is written last and carries ``complete: true``, as
every marker of the datastore. Arrays are written plane by plane, so memory is
one plane per pyramid level.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import datastore
from .fileio import canonical_json, write_text

NGFF_VERSION = "0.4"
UNIT = "micrometer"
CYX_AXES = [{"name": "c", "type": "channel"}] + [{"name": a, "type": "space", "unit": UNIT} for a in "zyx"]
LABELS_NAME = "cells"


def pyramid_shapes(shape_zyx, pyramid_max_px=1024) -> list[tuple]:
    """Shapes ``(z, y, x)`` of each level: y and x halved (rounded up) until both fit ``pyramid_max_px``."""
    shapes = [tuple(int(n) for n in shape_zyx)]
    while max(shapes[-1][1:]) > pyramid_max_px:
        z, y, x = shapes[-1]
        shapes.append((z, -(-y // 2), -(-x // 2)))
    return shapes


def downsample_plane(plane: np.ndarray, *, labels=False) -> np.ndarray:
    """One pyramid step of a (y, x) plane: 2 × 2 mean (images, rounded) or top-left sample (labels)."""
    if labels:
        return plane[::2, ::2]
    y, x = plane.shape
    padded = np.pad(plane.astype(np.float64), ((0, y % 2), (0, x % 2)), mode="edge")
    mean = padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2).mean(axis=(1, 3))
    return np.rint(mean).astype(plane.dtype)


def level_transforms(level: int, n_leading: int, voxel_size_zyx_um, origin_zyx_um, *, labels=False) -> list:
    """``coordinateTransformations`` of one level: scale, then the translation to the global frame.

    A mean over 2^level × 2^level voxels sits at the block's centre, half a block minus half a voxel
    from the first voxel's centre; a nearest sample sits on the first voxel.
    """
    factor = 2 ** level
    dz, dy, dx = (float(v) for v in voxel_size_zyx_um)
    shift = 0.0 if labels else (factor - 1) / 2
    oz, oy, ox = (float(v) for v in origin_zyx_um)
    return [{"type": "scale", "scale": [1.0] * n_leading + [dz, dy * factor, dx * factor]},
            {"type": "translation", "translation": [0.0] * n_leading + [oz, oy + shift * dy, ox + shift * dx]}]


def _multiscales(name, n_levels, axes, voxel_size_zyx_um, origin_zyx_um, *, labels=False):
    n_leading = len(axes) - 3
    return [{
        "version": NGFF_VERSION,
        "name": name,
        "axes": axes,
        "datasets": [{"path": str(level),
                      "coordinateTransformations": level_transforms(level, n_leading, voxel_size_zyx_um,
                                                                    origin_zyx_um, labels=labels)}
                     for level in range(n_levels)],
        "type": "nearest" if labels else "mean",
    }]


def _write_pyramid(group: Path, planes, n_channels, shapes, dtype, *, labels=False, threads=1):
    """Stream ``planes`` (an iterable of (c, z, plane)) into one (c, z, y, x) array per level."""
    dims = ("c", "z", "y", "x")
    handles = [datastore.create_array(group / str(level), (n_channels, *shape), dtype, threads=threads)
               for level, shape in enumerate(shapes)]
    for level in range(len(shapes)):
        datastore.write_dimension_names(group / str(level), dims)
    pending = []
    for c, z, plane in planes:
        for future in pending:
            future.result()
        pending = []
        for level, handle in enumerate(handles):
            if level:
                plane = downsample_plane(plane, labels=labels)
            pending.append(handle[c, z].write(plane))
    for future in pending:
        future.result()


def write_tile_view(out: Path, channels, voxel_size_zyx_um, origin_zyx_um, *, labels=None, attrs=None,
                    pyramid_max_px=1024, threads=1) -> Path:
    """Write one tile's OME-Zarr image group (module docstring); its ``.zattrs`` last.

    Parameters
    ----------
    out : Path
        The ``<tile>.ome.zarr`` folder (replaced).
    channels : list of (str, handle)
        Channel names and lazy (z, y, x) uint16 images (tensorstore handles or numpy), same shape.
    voxel_size_zyx_um, origin_zyx_um : sequence of 3 float
        Voxel size and global position of voxel (0, 0, 0), µm.
    labels : ndarray of uint32, optional
        (z, y, x) global cell ids, written as ``labels/cells``.
    attrs : dict, optional
        Provenance recorded under the ``merfishflow`` key.
    """
    out = Path(out)
    datastore.remove_marker(out)
    datastore.create_group(out)
    shape = tuple(int(n) for n in channels[0][1].shape)
    shapes = pyramid_shapes(shape, pyramid_max_px)

    def planes():
        for c, (_, handle) in enumerate(channels):
            for z in range(shape[0]):
                plane = handle[z]
                yield c, z, np.asarray(plane.read().result() if hasattr(plane, "read") else plane)

    _write_pyramid(out, planes(), len(channels), shapes, np.uint16, threads=threads)
    windows = []
    for _, handle in channels:
        sample = np.asarray(handle[shape[0] // 2].read().result() if hasattr(handle, "read") else
                            handle[shape[0] // 2])
        windows.append({"min": 0, "max": 65535, "start": float(np.percentile(sample, 1)),
                        "end": float(np.percentile(sample, 99.9))})
    if labels is not None:
        _write_labels(out, labels, voxel_size_zyx_um, origin_zyx_um, shapes, threads)
    body = {
        "multiscales": _multiscales(out.name, len(shapes), CYX_AXES, voxel_size_zyx_um, origin_zyx_um),
        "omero": {"version": NGFF_VERSION, "name": out.name,
                  "channels": [{"label": name, "color": "FFFFFF", "active": k == 0, "window": window}
                               for k, ((name, _), window) in enumerate(zip(channels, windows))],
                  "rdefs": {"model": "greyscale"}},
        "merfishflow": dict(attrs or {}),
    }
    datastore.write_marker(out, body)
    return out


def _write_labels(out: Path, labels, voxel_size_zyx_um, origin_zyx_um, shapes, threads):
    labels_group = datastore.create_group(out / "labels")
    group = datastore.create_group(labels_group / LABELS_NAME)
    labels = np.asarray(labels, np.uint32)
    _write_pyramid(group, ((0, z, labels[z]) for z in range(labels.shape[0])), 1, shapes, np.uint32,
                   labels=True, threads=threads)
    write_text(group / datastore.MARKER, canonical_json({
        "multiscales": _multiscales(LABELS_NAME, len(shapes), CYX_AXES, voxel_size_zyx_um, origin_zyx_um,
                                    labels=True),
        "image-label": {"version": NGFF_VERSION, "source": {"image": "../../"}},
    }))
    write_text(labels_group / datastore.MARKER, canonical_json({"labels": [LABELS_NAME]}))

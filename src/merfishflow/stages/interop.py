"""Exports for other tools: an OME-Zarr view per tile and one SpatialData store per experiment.

Both read the datastore through :class:`merfishflow.io.reader.Datastore` (one reader) and write under
``exports/`` (docs/exports.md, "OME-Zarr" and "SpatialData"):

- :func:`export_ome_zarr`: ``exports/ome_zarr/<tile>.ome.zarr``, the registered fiducial of every round,
  round 0's corrected fiducial and every registered readout bit as one OME-NGFF 0.4 image in µm at the
  tile's global placement, with a pyramid and the cells as OME-Zarr labels (:mod:`merfishflow.io.ngff`).
- :func:`export_spatialdata`: ``exports/experiment.spatialdata.zarr``, written with the ``spatialdata``
  package (optional dependency, ``pip install merfishflow[spatialdata]``).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io import datastore
from ..io.naming import round_name, tile_name
from ..io.ngff import write_tile_view
from ..io.paths import CORRECTED_DATA, REGISTERED_DATA
from ..io.reader import Datastore

FIDUCIAL_PREFIX = "polyDT"
CORRECTED_SUFFIX = "corrected"
POINT_COLUMNS = ("spot_id", "tile", "gene_id", "cell_id", "is_blank", "distance", "magnitude", "area")


def view_channels(ds: Datastore, tile: str) -> list[tuple[str, object]]:
    """``[(name, lazy image)]`` of a tile's view: registered fiducials (``polyDT_round0000``, ...), round 0's
    corrected fiducial (``polyDT_round0000_corrected``: segmentation's default image), then the bits."""
    channels = [(f"{FIDUCIAL_PREFIX}_{r}", ds.image(tile, r, REGISTERED_DATA)) for r in ds.rounds]
    channels.append((f"{FIDUCIAL_PREFIX}_{round_name(0)}_{CORRECTED_SUFFIX}",
                     ds.image(tile, round_name(0), CORRECTED_DATA)))
    channels += [(bit, ds.image(tile, bit, REGISTERED_DATA)) for bit in ds.bits]
    return channels


def _digest(ds: Datastore, tile: str) -> str:
    """sha256 over the markers of everything a tile's view reads."""
    markers = [ds.image_group(tile, r) / REGISTERED_DATA for r in ds.rounds]
    markers += [ds.image_group(tile, round_name(0)), ds.paths.global_registration(tile)]
    markers += [ds.image_group(tile, b) / REGISTERED_DATA for b in ds.bits]
    parts = [datastore.marker_digest(m) for m in markers]
    parts += [datastore.file_digest(p) for p in (ds.paths.cells_table, ds.paths.cell_masks(tile)) if p.exists()]
    return hashlib.sha256("".join(parts).encode()).hexdigest()


def export_ome_zarr(experiment_dir, tile, out, *, pyramid_max_px=1024, threads=1) -> Path:
    """Write ``out`` (``<tile>.ome.zarr``): the tile's OME-Zarr view (module docstring)."""
    ds = Datastore(experiment_dir)
    place = ds.placement(tile)
    has_cells = ds.paths.cells_table.exists() and ds.paths.cell_masks(tile).exists()
    labels = ds.cell_labels(tile) if has_cells else None
    attrs = {"stage": "export_ome_zarr", "tile": tile, "software": datastore.software_versions(),
             "parameters": {"pyramid_max_px": int(pyramid_max_px)}, "inputs_sha256": _digest(ds, tile),
             "affine_zyx_um": place.affine_zyx_um.tolist()}
    return write_tile_view(Path(out), view_channels(ds, tile), place.spacing_zyx_um, place.origin_zyx_um,
                           labels=labels, attrs=attrs, pyramid_max_px=pyramid_max_px, threads=threads)


# SpatialData -------------------------------------------------------------------------------------
def image_name(tile: str) -> str:
    return f"{tile}_image"


def labels_name(tile: str) -> str:
    return f"{tile}_cells"


def _to_global(place):
    """The tile's voxel grid -> global µm, as a spatialdata transformation (scale, then translation)."""
    from spatialdata.transformations import Scale, Sequence, Translation

    return Sequence([Scale(list(place.spacing_zyx_um), axes=("z", "y", "x")),
                     Translation(list(place.origin_zyx_um), axes=("z", "y", "x"))])


def build_spatialdata(experiment_dir, *, coordinate_system="global"):
    """The experiment as a :class:`spatialdata.SpatialData` object (in memory; images are read per tile).

    - images ``<tile>_image``: (c, z, y, x) uint16, the channels of :func:`view_channels`;
    - labels ``<tile>_cells``: (z, y, x) uint32 global ``cell_id`` s;
    - points ``transcripts``: the assigned spots at global µm (x, y, z), with ``gene_id``
      (feature key), ``cell_id`` (0 = none), ``spot_id``, ``tile``, ``is_blank``, ``distance``,
      ``magnitude``, ``area``;
    - table ``table``: the cell x gene counts; ``obs["region"]`` is the labels element of the cell's
      first tile and ``obs["cell_id"]`` its label value there (region and instance keys).

    Every element maps to ``coordinate_system`` in µm.
    """
    import pandas as pd
    import spatialdata as sd
    from spatialdata.models import Image3DModel, Labels3DModel, PointsModel, TableModel
    from spatialdata.transformations import Identity

    ds = Datastore(experiment_dir)
    images, labels = {}, {}
    for tile in ds.tiles:
        to_global = {coordinate_system: _to_global(ds.placement(tile))}
        channels = view_channels(ds, tile)
        stack = np.stack([datastore.read_region(h, (), what=f"{tile} {n}") for n, h in channels])
        images[image_name(tile)] = Image3DModel.parse(stack, dims=("c", "z", "y", "x"),
                                                      c_coords=[n for n, _ in channels], transformations=to_global)
        labels[labels_name(tile)] = Labels3DModel.parse(ds.cell_labels(tile), dims=("z", "y", "x"),
                                                        transformations=to_global)
    spots = ds.spots("assigned")
    frame = spots[list(POINT_COLUMNS)].copy()
    frame["gene_id"] = frame["gene_id"].astype("category")
    for axis in "xyz":
        frame[axis] = spots[f"global_{axis}_um"].to_numpy(np.float64)
    points = PointsModel.parse(frame, coordinates={"x": "x", "y": "y", "z": "z"}, feature_key="gene_id",
                               instance_key="cell_id", transformations={coordinate_system: Identity()})
    adata = ds.counts()
    cells = ds.cells()
    first_tile = [int(t[0]) for t in cells["instance_tile"]]
    regions = [labels_name(tile_name(t)) for t in first_tile]
    adata.obs["region"] = pd.Categorical(regions, categories=sorted(set(regions)))
    adata.obs["cell_id"] = adata.obs["cell_id"].astype(np.int32)
    table = TableModel.parse(adata, region=sorted(set(regions)), region_key="region", instance_key="cell_id")
    return sd.SpatialData(images=images, labels=labels, points={"transcripts": points}, tables={"table": table})


def export_spatialdata(experiment_dir, out) -> Path:
    """Write the experiment's SpatialData store (:func:`build_spatialdata`) to ``out`` (replaced)."""
    try:
        import spatialdata  # noqa: F401
    except ImportError:
        raise InputError("exports.spatialdata: the 'spatialdata' package is not installed; "
                         "pip install 'merfishflow[spatialdata]' or set exports.spatialdata: false") from None
    out = Path(out)
    sdata = build_spatialdata(experiment_dir)
    temp = out.with_name(out.name + ".partial")
    shutil.rmtree(temp, ignore_errors=True)
    sdata.write(temp)
    shutil.rmtree(out, ignore_errors=True)
    temp.rename(out)
    return out

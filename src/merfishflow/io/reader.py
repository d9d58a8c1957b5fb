"""Read a finished (or partly finished) datastore: ``merfishflow.Datastore(path)``.

One reader for users, the exports and the QC report. Every property comes
from the datastore's own markers (``calibrations.zarr/.zattrs``, the round
groups' ``.zattrs``, ``global_registration/.zattrs``), so a datastore copied
without its ``raw_data/`` still opens. Every reader checks the owning job's
marker says complete (:mod:`merfishflow.io.datastore`), so a half-written
output is never read as finished. Images stay lazy (tensorstore handles)
until asked for as numpy; tables are read when asked for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from ..errors import InputError
from . import datastore
from .naming import bit_name, index_of, round_name
from .paths import (CAMERA_DATA, CORRECTED_DATA, DECON_DATA, FLOW_FIELD, REGISTERED_DATA, ExperimentPaths,
                    experiment_of)

# Arrays of a round or bit group, by the job that owns their marker.
GROUP_ARRAYS = (CAMERA_DATA, CORRECTED_DATA)  # ingest's group marker vouches for them
MARKED_ARRAYS = (DECON_DATA, REGISTERED_DATA, FLOW_FIELD)  # each carries its own marker
IMAGE_NAMES = GROUP_ARRAYS + MARKED_ARRAYS
SPOT_TABLES = ("filtered", "assigned", "decoded")
_TILE = re.compile(r"tile\d{4}")


@dataclass(frozen=True)
class Placement:
    """Where a tile's registered voxel grid sits in the global frame (µm, z y x).

    ``global = affine_zyx_um @ [z·dz, y·dy, x·dx, 1]``; voxel ``p`` is at
    ``origin_zyx_um + p * spacing_zyx_um`` (docs/datastore.md, "Global placement").
    """

    affine_zyx_um: np.ndarray
    origin_zyx_um: tuple
    spacing_zyx_um: tuple


class Datastore:
    """A merfishflow datastore, read-only.

    Parameters
    ----------
    path : str or Path
        The experiment folder (holding ``qi2labdatastore/``) or the
        ``qi2labdatastore/`` folder itself.

    Examples
    --------
    >>> ds = Datastore("experiments/demo")                       # doctest: +SKIP
    >>> ds.tiles, ds.bits, ds.voxel_size_zyx_um                   # doctest: +SKIP
    >>> bit = ds.image("tile0000", "bit003")                      # lazy, registered by default
    >>> plane = bit[2].read().result()                            # one z-plane as numpy
    >>> spots = ds.spots()                                        # pandas, filtered spots
    """

    def __init__(self, path):
        path = Path(path)
        if path.name == "qi2labdatastore":
            root = path.parent
        elif (path / "qi2labdatastore").is_dir():
            root = path
        else:
            try:
                root = experiment_of(path / "x")
            except InputError:
                raise InputError(f"{path}: not an experiment folder (no qi2labdatastore/ inside)") from None
        self.paths = ExperimentPaths(root)
        if not self.paths.datastore.is_dir():
            raise InputError(f"{self.paths.datastore}: no datastore here; run the workflow first")

    def __repr__(self):
        return (f"Datastore({str(self.paths.root)!r}: {len(self.tiles)} tiles, {len(self.rounds)} rounds, "
                f"{len(self.bits)} bits)")

    # metadata ------------------------------------------------------------------------------------
    @cached_property
    def calibration(self) -> dict:
        """``calibrations.zarr/.zattrs``: the init stage's manifest (codebook, channels, optics, camera)."""
        return datastore.read_marker(self.paths.calibrations)

    @property
    def tiles(self) -> list[str]:
        """Tiles ingested into the datastore (``tile0000``, ...), in order."""
        folder = self.paths.datastore / "polyDT"
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and _TILE.fullmatch(p.name))

    @property
    def rounds(self) -> list[str]:
        return [round_name(r) for r in range(len(self.calibration["exp_order"]["rounds"]))]

    @property
    def bits(self) -> list[str]:
        return list(self.calibration["exp_codebook"]["bits"])

    @property
    def channels(self) -> list[dict]:
        """The TIFF channels in storage order: ``name``, ``role``, ``excitation_um``, ``emission_um``."""
        return [dict(c) for c in self.calibration["channels"]]

    @property
    def codebook(self):
        """The codebook as a pandas DataFrame: one row per gene_id (blanks included), one 0/1 column per bit."""
        import pandas as pd

        book = self.calibration["exp_codebook"]
        return pd.DataFrame(np.asarray(book["codewords"], dtype=np.uint8).reshape(len(book["gene_id"]), -1),
                            index=pd.Index(book["gene_id"], name="gene_id"), columns=book["bits"])

    @property
    def exp_order(self):
        """Which bit each readout channel images in each round: DataFrame, rows = rounds, columns = channels."""
        import pandas as pd

        order = self.calibration["exp_order"]
        return pd.DataFrame(order["rounds"], index=pd.Index(self.rounds, name="round"), columns=order["columns"])

    @property
    def bit_linker(self) -> dict:
        """``{bit: round}``: the round in which each bit is imaged."""
        return {bit_name(b): round_name(r) for r, row in enumerate(self.calibration["exp_order"]["rounds"])
                for b in row}

    @property
    def voxel_size_zyx_um(self) -> tuple:
        return tuple(float(v) for v in self.calibration["voxel_size_zyx_um"])

    @property
    def image_shape_zyx(self) -> tuple:
        return tuple(int(n) for n in self.calibration["image_shape_zyx"])

    @property
    def stage_positions(self):
        """Stage position (µm, z y x) of each tile's first voxel, from its round-0 ingest marker: DataFrame."""
        import pandas as pd

        rows = [datastore.read_marker(self.paths.fiducial_group(t, round_name(0)))["stage_zyx_um"]
                for t in self.tiles]
        return pd.DataFrame(np.asarray(rows, float).reshape(-1, 3), index=pd.Index(self.tiles, name="tile"),
                            columns=["z_um", "y_um", "x_um"])

    def placement(self, tile: str) -> Placement:
        """The tile's global placement, written by ``register_global``."""
        attrs = datastore.read_marker(self.paths.global_registration(self._tile(tile)))
        return Placement(np.asarray(attrs["affine_zyx_um"], float), tuple(float(v) for v in attrs["origin_zyx_um"]),
                         tuple(float(v) for v in attrs["spacing_zyx_um"]))

    def affine_zyx_um(self, tile: str) -> np.ndarray:
        return self.placement(tile).affine_zyx_um

    def origin_zyx_um(self, tile: str) -> tuple:
        return self.placement(tile).origin_zyx_um

    def spacing_zyx_um(self, tile: str) -> tuple:
        return self.placement(tile).spacing_zyx_um

    # images --------------------------------------------------------------------------------------
    def image_group(self, tile: str, channel: str) -> Path:
        """The zarr group of a fiducial round (``round0001``) or readout bit (``bit003``) of a tile."""
        tile = self._tile(tile)
        if channel.startswith("round"):
            if channel not in self.rounds:
                raise InputError(f"{channel}: no such round; the datastore has {self.rounds}")
            return self.paths.fiducial_group(tile, channel)
        if channel.startswith("bit"):
            if channel not in self.bits:
                raise InputError(f"{channel}: no such bit; the datastore has {self.bits[0]}..{self.bits[-1]}")
            return self.paths.readout_group(tile, channel)
        raise InputError(f"{channel!r}: expected a round (round0000) or a bit (bit001)")

    def image(self, tile: str, channel: str, name: str = REGISTERED_DATA, *, numpy: bool = False):
        """One image of a tile's fiducial round or readout bit.

        Parameters
        ----------
        tile : str
            ``tile0000``, ...
        channel : str
            A round (its fiducial, ``round0000``) or a bit (``bit001``).
        name : str
            ``camera_data``, ``corrected_data``, ``decon_data``,
            ``registered_decon_data`` (default) or ``of_xyz_3x_downsample``
            (rounds > 0 only).
        numpy : bool
            Read the whole image into memory instead of returning the lazy handle.

        Returns
        -------
        tensorstore.TensorStore or ndarray
            The lazy handle (``handle[z].read().result()`` reads one plane), or numpy.
        """
        if name not in IMAGE_NAMES:
            raise InputError(f"image name {name!r}; expected one of {', '.join(IMAGE_NAMES)}")
        group = self.image_group(tile, channel)
        if name in GROUP_ARRAYS:
            handle = datastore.open_array(group, name)
        else:
            handle = datastore.open_marked_array(group / name)
        return datastore.read_region(handle, (), what=str(group / name)) if numpy else handle

    def image_attrs(self, tile: str, channel: str, name: str = REGISTERED_DATA) -> dict:
        """The marker that vouches for an image (its job's parameters, digests and measurements)."""
        group = self.image_group(tile, channel)
        return datastore.read_marker(group if name in GROUP_ARRAYS else group / name)

    # tables --------------------------------------------------------------------------------------
    def spots(self, which: str = "filtered", tile: str | None = None):
        """A spot table as pandas (docs/outputs.md for the columns).

        ``"filtered"``: all tiles after the FDR filter; ``"assigned"``: the same
        with ``cell_id``; ``"decoded"``: one tile's (``tile=``) decoded spots.
        """
        import pyarrow.parquet as pq

        if which == "filtered":
            path = self.paths.filtered_spots
        elif which == "assigned":
            path = self.paths.assigned_spots
        elif which == "decoded":
            if tile is None:
                raise InputError("spots('decoded') needs tile=, e.g. tile='tile0000'")
            path = self.paths.decoded_tile(self._tile(tile))
        else:
            raise InputError(f"spots: which={which!r}; expected one of {', '.join(SPOT_TABLES)}")
        return pq.read_table(self._existing(path, "spots")).to_pandas()

    def spot_metadata(self, which: str = "filtered", tile: str | None = None) -> dict:
        """What the writing stage recorded in a spot table (parameters, thresholds, FDR report)."""
        import json

        import pyarrow.parquet as pq

        path = {"filtered": self.paths.filtered_spots, "assigned": self.paths.assigned_spots}.get(which)
        if which == "decoded":
            path = self.paths.decoded_tile(self._tile(tile or ""))
        if path is None:
            raise InputError(f"spot_metadata: which={which!r}; expected one of {', '.join(SPOT_TABLES)}")
        meta = pq.read_schema(self._existing(path, "spots")).metadata or {}
        return json.loads(meta.get(b"merfishflow", b"{}"))

    def cells(self):
        """The global cell table (``segmentation/cells.parquet``) as pandas."""
        import pyarrow.parquet as pq

        return pq.read_table(self._existing(self.paths.cells_table, "cells")).to_pandas()

    def counts(self):
        """The cell x gene counts (``counts/cell_by_gene.h5ad``) as AnnData."""
        import anndata as ad

        return ad.read_h5ad(self._existing(self.paths.counts_files()["cell_by_gene"], "counts"))

    def masks(self, tile: str):
        """A tile's cell masks (:class:`merfishflow.io.masks.MaskSet`, local labels)."""
        from .masks import read_masks

        return read_masks(self._existing(self.paths.cell_masks(self._tile(tile)), "masks"))

    def labels(self, tile: str) -> np.ndarray:
        """A tile's uint32 label volume in its registered voxel grid (local labels, 0 = background)."""
        return self.masks(tile).to_labels()

    def cell_labels(self, tile: str) -> np.ndarray:
        """A tile's label volume in global ``cell_id`` s (0 = background), through the mapping that
        ``cells.parquet`` persists (``instance_tile``, ``instance_label``)."""
        labels = self.labels(tile)
        return global_label_lut(self.cells(), index_of(tile, "tile"), int(labels.max(initial=0)))[labels]

    # helpers -------------------------------------------------------------------------------------
    def _tile(self, tile: str) -> str:
        index_of(tile, "tile")
        if tile not in self.tiles:
            raise InputError(f"{tile}: not in the datastore; it has {self.tiles}")
        return tile

    @staticmethod
    def _existing(path: Path, what: str) -> Path:
        if not path.exists():
            raise InputError(f"{path}: not written yet; run the workflow up to the stage that writes the {what}")
        return path


def global_label_lut(cells, tile_index: int, max_label: int) -> np.ndarray:
    """``lut[local label] = cell_id`` for one tile, from the cell table's persisted instance mapping."""
    if "instance_tile" not in cells:
        raise InputError("cells.parquet has no instance_tile/instance_label columns (written by an older "
                         "merfishflow); rerun the assign stage")
    lut = np.zeros(max_label + 1, np.uint32)
    for cell_id, tiles, labels in zip(cells["cell_id"], cells["instance_tile"], cells["instance_label"]):
        for t, label in zip(tiles, labels):
            if t == tile_index and label <= max_label:
                lut[label] = cell_id
    return lut

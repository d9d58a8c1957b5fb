"""One object that knows every path of an experiment (raw data and datastore).

Rules, scripts, tests and the CLI all build paths here and nowhere else, so the
on-disk layout of DESIGN.md §2 has exactly one home. Methods take the fixed
names (``"tile0000"``, ``"round0000"``, ``"bit001"``) so that the same call
builds a concrete path or, given ``"{tile}"``, a Snakemake pattern.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from .naming import round_name

# Arrays and subgroups inside a tile's round or bit group (DESIGN.md §2).
CAMERA_DATA = "camera_data"
CORRECTED_DATA = "corrected_data"
DECON_DATA = "decon_data"
REGISTERED_DATA = "registered_decon_data"
FLOW_FIELD = "of_xyz_3x_downsample"
GLOBAL_REGISTRATION = "global_registration"
# Which round-0 fiducial the segment stage reads (``segmentation.image``); the first is the default.
# Round 0 is the registration reference, so both lie in the registered frame. Corrected: deconvolution
# sharpens the stain's granular texture into spikes (docs/masks.md, "Which image").
SEGMENTATION_IMAGES = ("corrected", "deconvolved")


def inside(base: Path, relative: str, what: str) -> Path:
    """``base / relative``, refusing names that would escape ``base``.

    Parameters
    ----------
    base : Path
        Directory the result must stay in.
    relative : str
        A relative path taken from user input (config or metadata).
    what : str
        Where the name came from, for the error message.
    """
    if os.path.isabs(relative) or ".." in Path(relative).parts or relative.strip() == "":
        raise InputError(f"{what}: {relative!r} must be a relative name inside {base} (no absolute path, no '..')")
    return base / relative


@dataclass(frozen=True)
class ExperimentPaths:
    """Paths of one experiment: ``<root>/raw_data`` (read-only) and ``<root>/qi2labdatastore``."""

    root: Path

    def __init__(self, root):
        object.__setattr__(self, "root", Path(root))

    # raw data -----------------------------------------------------------------
    @property
    def raw(self) -> Path:
        return self.root / "raw_data"

    @property
    def experiment_yaml(self) -> Path:
        return self.raw / "experiment.yaml"

    @property
    def codebook_csv(self) -> Path:
        return self.raw / "codebook.csv"

    @property
    def exp_order_csv(self) -> Path:
        return self.raw / "exp_order.csv"

    @property
    def stage_positions_csv(self) -> Path:
        return self.raw / "stage_positions.csv"

    def raw_file(self, name: str, what: str) -> Path:
        """An optional raw_data file named in experiment.yaml (checked to stay inside raw_data)."""
        return inside(self.raw, name, what)

    def raw_tiff(self, tile: str, round_: str) -> Path:
        return self.raw / tile / f"{round_}.tif"

    @property
    def simulation_mark(self) -> Path:
        """Written first by the simulator into a raw_data/ it creates: the parameters it simulated with.
        A raw_data/ without it is the user's and is never written to."""
        return self.raw / ".merfishflow_simulation.json"

    @property
    def ground_truth(self) -> Path:
        return self.root / "ground_truth"

    # datastore ----------------------------------------------------------------
    @property
    def datastore(self) -> Path:
        return self.root / "qi2labdatastore"

    @property
    def datastore_json(self) -> Path:
        return self.datastore / "datastore.json"

    @property
    def calibrations(self) -> Path:
        return self.datastore / "calibrations.zarr"

    def fiducial_group(self, tile: str, round_: str) -> Path:
        return self.datastore / "polyDT" / tile / f"{round_}.zarr"

    def readout_group(self, tile: str, bit: str) -> Path:
        return self.datastore / "readouts" / tile / f"{bit}.zarr"

    def fiducial_array(self, tile: str, round_: str, name: str) -> Path:
        """An array (or subgroup) of a fiducial round group, e.g. ``decon_data``."""
        return self.fiducial_group(tile, round_) / name

    def segmentation_source(self, tile: str, image: str = SEGMENTATION_IMAGES[0]) -> Path:
        """Owner of the round-0 fiducial that ``image`` names (:data:`SEGMENTATION_IMAGES`): the round group
        for ``corrected`` (its marker records ``corrected_data``), the registered array for ``deconvolved``."""
        if image == "corrected":
            return self.fiducial_group(tile, round_name(0))
        if image == "deconvolved":
            return self.fiducial_array(tile, round_name(0), REGISTERED_DATA)
        raise InputError(f"segmentation.image: expected one of {', '.join(SEGMENTATION_IMAGES)}, got {image!r}")

    def readout_array(self, tile: str, bit: str, name: str) -> Path:
        return self.readout_group(tile, bit) / name

    def global_registration(self, tile: str) -> Path:
        """Subgroup of a tile's round-0 fiducial holding its global placement (docs/datastore.md)."""
        return self.fiducial_group(tile, round_name(0)) / GLOBAL_REGISTRATION

    @property
    def decoded(self) -> Path:
        return self.datastore / "decoded"

    def decoded_tile(self, tile: str) -> Path:
        return self.decoded / f"{tile}_decoded_features.parquet"

    @property
    def filtered_spots(self) -> Path:
        return self.decoded / "all_tiles_filtered.parquet"

    @property
    def filtered_spots_csv(self) -> Path:
        """starfish DecodedSpots columns."""
        return self.decoded / "all_tiles_filtered_starfish.csv"

    @property
    def evaluation_json(self) -> Path:
        return self.decoded / "evaluation.json"

    @property
    def segmentation(self) -> Path:
        return self.datastore / "segmentation"

    def cell_masks(self, tile: str) -> Path:
        """Versioned mask file of a tile (docs/masks.md)."""
        return self.segmentation / f"{tile}_cells.mfmask"

    @property
    def cells_table(self) -> Path:
        return self.segmentation / "cells.parquet"

    @property
    def assigned_spots(self) -> Path:
        """The filtered spots with their cell_id."""
        return self.decoded / "all_tiles_filtered_cells.parquet"

    @property
    def assigned_spots_csv(self) -> Path:
        return self.decoded / "all_tiles_filtered_cells_starfish.csv"

    @property
    def counts(self) -> Path:
        return self.datastore / "counts"

    def counts_files(self) -> dict:
        return {name: self.counts / name for name in
                ("matrix.mtx.gz", "barcodes.tsv.gz", "features.tsv.gz", "cell_by_gene.h5ad")}

    @property
    def exports(self) -> Path:
        return self.datastore / "exports"

    def ome_zarr_view(self, tile: str) -> Path:
        """A tile's OME-Zarr image group (registered rounds and bits, corrected fiducial, cell labels)."""
        return self.exports / "ome_zarr" / f"{tile}.ome.zarr"

    @property
    def spatialdata_store(self) -> Path:
        return self.exports / "experiment.spatialdata.zarr"

    @property
    def provenance(self) -> Path:
        return self.datastore / "provenance"

    # logs (outside the datastore) ---------------------------------------------
    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def job_log(self, stage: str, name: str) -> Path:
        """A job's progress log."""
        return self.logs / stage / f"{name}.log"

    def job_benchmark(self, stage: str, name: str) -> Path:
        """A job's Snakemake benchmark TSV (wall seconds, peak RSS, CPU time; ``benchmark:`` of every rule)."""
        return self.logs / "benchmarks" / stage / f"{name}.tsv"


def experiment_of(path) -> Path:
    """The experiment folder of any path under its ``raw_data/`` or ``qi2labdatastore/``.

    Jobs take their experiment from their own input or output paths, so a
    rule never passes a path prefix as a parameter.
    """
    path = Path(path)
    for parent in path.parents:
        if parent.name in ("raw_data", "qi2labdatastore"):
            return parent.parent
    raise InputError(f"{path}: not inside an experiment's raw_data/ or qi2labdatastore/ folder")


def marker(group: Path) -> Path:
    """The ``.zattrs`` of a zarr group or array: the completion marker of whoever owns it."""
    return Path(group) / ".zattrs"

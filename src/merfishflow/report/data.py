"""What the QC report shows, read from a finished datastore (markers, spot tables, cells).

Small read functions, one per section of the report. Every value comes from
what the stages recorded (markers, Parquet metadata, tables); nothing is
recomputed except the FDR filter's blank probability, which is evaluated
from the logistic-regression model the filter stored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ..errors import MerfishflowError
from ..io import datastore
from ..io.paths import FLOW_FIELD, REGISTERED_DATA, ExperimentPaths
from ..spots.filtering import FEATURES

BLANK_PREFIX = "Blank-"
SPOT_METADATA_KEY = b"merfishflow"
# Keys of a register marker that the registration table shows in its own columns (or never).
_REGISTER_SKIPPED = {"complete", "software", "parameters", "inputs_sha256", "stage", "round", "reference",
                     "shift_zyx_px", "flow_field", "meaning", "units", "downsample_zyx"}


@dataclass(frozen=True)
class Manifest:
    """Tiles, rounds and codebook of an experiment, as ``calibrations.zarr`` recorded them."""

    tiles: tuple
    rounds: tuple
    gene_ids: tuple
    voxel_size_zyx_um: tuple
    calibration: dict


def read_manifest(paths: ExperimentPaths, tiles) -> Manifest:
    """The calibration marker and the experiment's tiles and rounds."""
    calibration = datastore.read_marker(paths.calibrations)
    n_rounds = len(calibration["exp_order"]["rounds"])
    return Manifest(tiles=tuple(tiles), rounds=tuple(f"round{r:04d}" for r in range(n_rounds)),
                    gene_ids=tuple(calibration["exp_codebook"]["gene_id"]),
                    voxel_size_zyx_um=tuple(calibration["voxel_size_zyx_um"]), calibration=calibration)


def spot_table_metadata(path) -> dict:
    """The stage record in a spot table's Parquet metadata (``{}`` when absent)."""
    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta[SPOT_METADATA_KEY]) if SPOT_METADATA_KEY in meta else {}


SPOT_COLUMNS = ["tile", "gene_id", "z_px", "y_px", "x_px", "global_y_um", "global_x_um", "distance", "magnitude",
                "area", "is_blank"]


def read_decoded_spots(paths: ExperimentPaths, tiles) -> pd.DataFrame:
    """Every tile's decoded spots before the FDR filter (the columns the report needs)."""
    frames = [pq.read_table(paths.decoded_tile(t), columns=SPOT_COLUMNS).to_pandas() for t in tiles]
    return pd.concat(frames, ignore_index=True)


def read_filtered_spots(paths: ExperimentPaths) -> tuple[pd.DataFrame, dict]:
    """The filtered (and, when assigned, cell-labelled) spots and the filter's report."""
    path = paths.assigned_spots if paths.assigned_spots.is_file() else paths.filtered_spots
    columns = SPOT_COLUMNS + (["cell_id"] if path == paths.assigned_spots else [])
    spots = pq.read_table(path, columns=columns).to_pandas()
    report = spot_table_metadata(paths.filtered_spots).get("report", {})
    return spots, report


def blank_probability(spots: pd.DataFrame, model: dict) -> np.ndarray | None:
    """The filter's stored logistic model evaluated on ``spots`` (None when it was not fitted)."""
    if not model.get("fitted") or list(model.get("features", [])) != list(FEATURES):
        return None
    x = np.column_stack([
        spots["distance"].to_numpy(np.float64),
        np.log10(np.maximum(spots["magnitude"].to_numpy(np.float64), 1e-12)),
        np.log10(np.maximum(spots["area"].to_numpy(np.float64), 1.0)),
    ])
    z = (x - np.asarray(model["mean"])) / np.asarray(model["scale"])
    logit = z @ np.asarray(model["coefficients"]) + float(model["intercept"])
    return 1.0 / (1.0 + np.exp(-logit))


def read_registration(paths: ExperimentPaths, manifest: Manifest) -> pd.DataFrame:
    """One row per tile and round from the fiducial's register markers.

    Columns: ``tile``, ``round``, ``shift_z_px``, ``shift_y_px``,
    ``shift_x_px``, ``field_kept`` (whether a deformation field is applied:
    an explicit decision in the marker when it records one, else whether it
    names a flow field; None for the reference round), ``field_rms_px`` (RMS of the stored field, all
    axes), and every other scalar the marker records (scores such as
    ``ncc_before``/``ncc_rigid``/``ncc_after`` and any flow-accept score).
    Missing markers give no row.
    """
    rows = []
    for tile in manifest.tiles:
        for round_ in manifest.rounds:
            group = paths.fiducial_array(tile, round_, REGISTERED_DATA)
            if not datastore.is_complete(group):
                continue
            attrs = datastore.read_marker(group)
            shift = attrs.get("shift_zyx_px", [0.0, 0.0, 0.0])
            row = {"tile": tile, "round": round_, "shift_z_px": shift[0], "shift_y_px": shift[1],
                   "shift_x_px": shift[2]}
            field_attrs = {}
            field_path = paths.fiducial_array(tile, round_, FLOW_FIELD)
            if attrs.get("flow_field") and datastore.is_complete(field_path):
                field_attrs = datastore.read_marker(field_path)
            decision = _flow_decision(attrs) if _flow_decision(attrs) is not None else _flow_decision(field_attrs)
            if round_ == manifest.rounds[0]:
                row["field_kept"] = None  # the reference round is not moved
            else:
                row["field_kept"] = bool(attrs.get("flow_field")) if decision is None else decision
            rms = field_attrs.get("rms_px")
            row["field_rms_px"] = float(np.sqrt(np.sum(np.square(rms)))) if rms else np.nan
            for source in (field_attrs, attrs):
                for key, value in sorted(source.items()):
                    if key not in _REGISTER_SKIPPED and key not in row and _is_scalar(value):
                        row[key] = value
            rows.append(row)
    return pd.DataFrame(rows)


def _is_scalar(value) -> bool:
    return isinstance(value, (bool, int, float)) or value is None


def _flow_decision(attrs: dict):
    """An explicit keep/reject decision for the deformation field, if the marker records one."""
    for key in ("flow_accepted", "flow_kept", "field_kept", "flow_applied", "optical_flow_accepted"):
        if isinstance(attrs.get(key), bool):
            return attrs[key]
    return None


def read_placements(paths: ExperimentPaths, manifest: Manifest) -> pd.DataFrame:
    """Each tile's stage and registered global origin (µm), its extent and its pair scores."""
    rows = []
    for tile in manifest.tiles:
        group = paths.global_registration(tile)
        if not datastore.is_complete(group):
            continue
        attrs = datastore.read_marker(group)
        shape = _registered_shape(paths, tile, manifest.rounds[0])
        extent = [n * s for n, s in zip(shape, attrs["spacing_zyx_um"])]
        rows.append({"tile": tile, "stage_y_um": attrs["stage_zyx_um"][1], "stage_x_um": attrs["stage_zyx_um"][2],
                     "origin_y_um": attrs["origin_zyx_um"][1], "origin_x_um": attrs["origin_zyx_um"][2],
                     "origin_z_um": attrs["origin_zyx_um"][0], "extent_y_um": extent[1], "extent_x_um": extent[2],
                     "pairs": attrs.get("pairs", []), "residual_rms_um": attrs.get("residual_rms_um")})
    return pd.DataFrame(rows)


def _registered_shape(paths: ExperimentPaths, tile: str, round0: str) -> tuple:
    return tuple(datastore.open_marked_array(paths.fiducial_array(tile, round0, REGISTERED_DATA)).shape)


def read_projection(paths: ExperimentPaths, tile: str, round0: str) -> np.ndarray:
    """Maximum projection along z of a tile's registered round-0 fiducial."""
    data = datastore.read_marked_array(paths.fiducial_array(tile, round0, REGISTERED_DATA))
    return np.asarray(data, dtype=np.float32).max(axis=0)


def read_cells(paths: ExperimentPaths) -> pd.DataFrame:
    """``segmentation/cells.parquet`` (empty when assign has not run)."""
    if not paths.cells_table.is_file():
        return pd.DataFrame(columns=["cell_id", "volume_um3"])
    return pq.read_table(paths.cells_table).to_pandas()


def read_evaluation(paths: ExperimentPaths) -> dict | None:
    """The simulator's scores (``decoded/evaluation.json``), when the experiment is simulated."""
    if not paths.evaluation_json.is_file():
        return None
    return json.loads(paths.evaluation_json.read_text())


def read_stage_records(paths: ExperimentPaths, manifest: Manifest) -> list[dict]:
    """For each stage: the software versions and parameters its first marker or table recorded."""
    tile = manifest.tiles[0]
    round0 = manifest.rounds[0]
    sources = [
        ("init", lambda: manifest.calibration),
        ("ingest", lambda: datastore.read_marker(paths.fiducial_group(tile, round0))),
        ("deconvolve", lambda: datastore.read_marker(paths.fiducial_array(tile, round0, "decon_data"))),
        ("register_local", lambda: datastore.read_marker(paths.fiducial_array(tile, round0, REGISTERED_DATA))),
        ("register_global", lambda: datastore.read_marker(paths.global_registration(tile))),
        ("decode", lambda: spot_table_metadata(paths.decoded_tile(tile))),
        ("filter", lambda: spot_table_metadata(paths.filtered_spots)),
        ("assign", lambda: spot_table_metadata(paths.assigned_spots)),
    ]
    records = []
    for stage, read in sources:
        try:
            attrs = read()
        except (OSError, MerfishflowError):
            continue
        records.append({"stage": stage, "software": attrs.get("software", {}),
                        "parameters": attrs.get("parameters", {})})
    return records

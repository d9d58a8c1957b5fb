"""What the QC report shows, read from a finished datastore through :class:`merfishflow.Datastore`.

Small read functions, one per section of the report. Every value comes from
what the stages recorded (markers, Parquet metadata, tables); nothing is
recomputed except the FDR filter's blank probability, which is evaluated
from the logistic-regression model the filter stored.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from ..errors import MerfishflowError
from ..io import datastore
from ..io.paths import FLOW_FIELD, REGISTERED_DATA
from ..io.reader import Datastore
from ..spots.filtering import FEATURES

BLANK_PREFIX = "Blank-"
# Keys of a register marker that the registration table shows in its own columns (or never).
_REGISTER_SKIPPED = {"complete", "software", "parameters", "inputs_sha256", "stage", "round", "reference",
                     "shift_zyx_px", "flow_field", "meaning", "units", "downsample_zyx", "dtype", "shape",
                     "chunks", "_ARRAY_DIMENSIONS"}


def gene_ids(ds: Datastore) -> list[str]:
    """Codebook rows (blanks included), in codebook order."""
    return list(ds.calibration["exp_codebook"]["gene_id"])


def read_decoded_spots(ds: Datastore, tiles) -> pd.DataFrame:
    """Every tile's decoded spots before the FDR filter."""
    return pd.concat([ds.spots("decoded", tile=t) for t in tiles], ignore_index=True)


def read_filtered_spots(ds: Datastore) -> tuple[pd.DataFrame, dict]:
    """The filtered (and, when assigned, cell-labelled) spots and the filter's report."""
    which = "assigned" if ds.paths.assigned_spots.is_file() else "filtered"
    return ds.spots(which), ds.spot_metadata("filtered").get("report", {})


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


def read_registration(ds: Datastore, tiles) -> pd.DataFrame:
    """One row per tile and round from the fiducial's register markers.

    Columns: ``tile``, ``round``, ``shift_z_px``, ``shift_y_px``,
    ``shift_x_px``, ``field_kept`` (whether a deformation field is applied:
    an explicit decision in the marker when it records one, else whether it
    names a flow field; None for the reference round), ``field_rms_px`` (RMS
    length of the stored field), and every other scalar the markers record
    (scores such as ``ncc_before``/``ncc_rigid``/``ncc_after`` and any
    flow-accept score). Rounds without a complete marker give no row.
    """
    rows = []
    for tile in tiles:
        for round_ in ds.rounds:
            try:
                attrs = ds.image_attrs(tile, round_, REGISTERED_DATA)
            except MerfishflowError:
                continue
            shift = attrs.get("shift_zyx_px", [0.0, 0.0, 0.0])
            row = {"tile": tile, "round": round_, "shift_z_px": shift[0], "shift_y_px": shift[1],
                   "shift_x_px": shift[2]}
            field_attrs = {}
            if attrs.get("flow_field"):
                try:
                    field_attrs = ds.image_attrs(tile, round_, FLOW_FIELD)
                except MerfishflowError:
                    pass
            decision = _flow_decision(attrs)
            decision = _flow_decision(field_attrs) if decision is None else decision
            if round_ == ds.rounds[0]:
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
    return isinstance(value, (bool, int, float, str)) or value is None


def _flow_decision(attrs: dict):
    """Whether the marker says the deformation field was kept (None when it records no decision).

    The register stage records ``flow_decision``: ``accepted``, ``accepted
    unconditionally``, ``rejected`` or ``not computed``; a boolean under one
    of the other names is read too.
    """
    decision = attrs.get("flow_decision")
    if isinstance(decision, str):
        return decision.startswith("accepted")
    for key in ("flow_accepted", "flow_kept", "field_kept", "flow_applied"):
        if isinstance(attrs.get(key), bool):
            return attrs[key]
    return None


def read_placements(ds: Datastore, tiles) -> pd.DataFrame:
    """Each tile's stage and registered global origin (µm), its extent and its pair scores."""
    rows = []
    round0 = ds.rounds[0]
    for tile in tiles:
        group = ds.paths.global_registration(tile)
        if not datastore.is_complete(group):
            continue
        attrs = datastore.read_marker(group)
        shape = ds.image(tile, round0).shape
        extent = [n * s for n, s in zip(shape, attrs["spacing_zyx_um"])]
        rows.append({"tile": tile, "stage_y_um": attrs["stage_zyx_um"][1], "stage_x_um": attrs["stage_zyx_um"][2],
                     "origin_y_um": attrs["origin_zyx_um"][1], "origin_x_um": attrs["origin_zyx_um"][2],
                     "origin_z_um": attrs["origin_zyx_um"][0], "extent_y_um": extent[1], "extent_x_um": extent[2],
                     "pairs": attrs.get("pairs", []), "residual_rms_um": attrs.get("residual_rms_um")})
    return pd.DataFrame(rows)


def read_projection(ds: Datastore, tile: str) -> np.ndarray:
    """Maximum projection along z of a tile's registered round-0 fiducial."""
    return np.asarray(ds.image(tile, ds.rounds[0], numpy=True), dtype=np.float32).max(axis=0)


def read_cells(ds: Datastore) -> pd.DataFrame:
    """``segmentation/cells.parquet`` (empty when assign has not run)."""
    if not ds.paths.cells_table.is_file():
        return pd.DataFrame(columns=["cell_id", "volume_um3"])
    return ds.cells()


def read_evaluation(ds: Datastore) -> dict | None:
    """The simulator's scores (``decoded/evaluation.json``), when the experiment is simulated."""
    if not ds.paths.evaluation_json.is_file():
        return None
    return json.loads(ds.paths.evaluation_json.read_text())


def read_stage_records(ds: Datastore, tiles) -> list[dict]:
    """For each stage: the software versions and parameters its first marker or table recorded."""
    tile, round0 = tiles[0], ds.rounds[0]
    sources = [
        ("init", lambda: ds.calibration),
        ("ingest", lambda: ds.image_attrs(tile, round0, "corrected_data")),
        ("deconvolve", lambda: ds.image_attrs(tile, round0, "decon_data")),
        ("register_local", lambda: ds.image_attrs(tile, round0, REGISTERED_DATA)),
        ("register_global", lambda: datastore.read_marker(ds.paths.global_registration(tile))),
        ("decode", lambda: ds.spot_metadata("decoded", tile=tile)),
        ("filter", lambda: ds.spot_metadata("filtered")),
        ("assign", lambda: ds.spot_metadata("assigned")),
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

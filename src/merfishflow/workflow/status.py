"""Which stages are complete, read from the markers; ``datastore.json`` and ``merfishflow status``.

The markers (``.zattrs`` with ``complete: true``) are the truth; this module
only reads them. ``datastore.json`` is their summary, written by the
workflow's last job of every run (rule ``datastore``) from the markers the
run's jobs left, plus the manifest of tiles, rounds, bits and channels.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..io import datastore
from ..io.fileio import canonical_json, write_text
from ..io.metadata import Experiment, round_targets
from ..io.paths import DECON_DATA, FLOW_FIELD, REGISTERED_DATA, ExperimentPaths, marker

DATASTORE_VERSION = 1
# Stages in pipeline order.
STAGES = ("init", "ingest", "deconvolve", "register_local", "register_global", "decode", "filter", "evaluate",
          "segment", "assign")


def tile_markers(experiment: Experiment, paths: ExperimentPaths, tile: str) -> dict:
    """``{stage: [marker folders]}`` that the per-tile stages write for one tile."""
    rounds, bits = experiment.rounds, experiment.bits
    # Round by round, fiducial then bits: the order the ingest and deconvolve jobs write them.
    ingest = [group for r in rounds for group, _, _ in round_targets(paths, experiment, tile, r)]
    decon = [g / DECON_DATA for g in ingest]
    local = ([paths.fiducial_array(tile, r, REGISTERED_DATA) for r in rounds]
             + [paths.fiducial_array(tile, r, FLOW_FIELD) for r in rounds[1:]]
             + [paths.readout_array(tile, b, REGISTERED_DATA) for b in bits])
    return {"ingest": ingest, "deconvolve": decon, "register_local": local,
            "register_global": [paths.global_registration(tile)], "decode": [paths.decoded_tile(tile)],
            "segment": [paths.cell_masks(tile)]}


def stage_groups(experiment: Experiment, paths: ExperimentPaths, *, simulated=None) -> dict:
    """``{stage: {tile or "experiment": [marker folders or product files]}}`` of every stage.

    ``evaluate`` is listed for simulated experiments (``simulated=None``: as the newest run's config
    said, :func:`ran_as_simulation`).
    """
    out = {"init": {"experiment": [paths.calibrations]}}
    for tile in experiment.tiles:
        for stage, markers in tile_markers(experiment, paths, tile).items():
            out.setdefault(stage, {})[tile] = markers
    out["filter"] = {"experiment": [paths.filtered_spots, paths.filtered_spots_csv]}
    out["assign"] = {"experiment": [paths.assigned_spots, paths.assigned_spots_csv, paths.cells_table,
                                    *paths.counts_files().values()]}
    if simulated or (simulated is None and ran_as_simulation(paths)):
        out["evaluate"] = {"experiment": [paths.evaluation_json]}
    return out


def ran_as_simulation(paths: ExperimentPaths) -> bool:
    """Whether the evaluate stage applies: the newest run's config (logs/provenance) had simulation.enabled;
    before any run, whether the folder has the simulator's ground truth. A real experiment made from a
    copy of a simulated one (ground_truth/ kept) is thus not shown an evaluate stage it never runs."""
    import json

    records = sorted((paths.root / "logs" / "provenance").glob("run-*.json"))
    if records:
        try:
            return bool(json.loads(records[-1].read_text())["config"]["simulation"]["enabled"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return (paths.ground_truth / "spots.parquet").is_file()


PRODUCT_SUFFIXES = (".parquet", ".csv", ".json", ".mfmask", ".gz", ".h5ad")


def target_file(target: Path) -> Path:
    """The file Snakemake tracks for a stage target: a product file itself, else the folder's ``.zattrs``."""
    return target if target.suffix in PRODUCT_SUFFIXES else marker(target)


def is_done(target: Path) -> bool:
    """A marker folder is done when its ``.zattrs`` says complete; a product file when it exists
    (products are written atomically: one that exists is whole)."""
    return target.is_file() if target.suffix in PRODUCT_SUFFIXES else datastore.is_complete(target)


def stage_states(experiment: Experiment, experiment_dir, *, simulated=None) -> dict:
    """Per stage: ``complete`` (every unit done) and the per-tile state."""
    paths = ExperimentPaths(experiment_dir)
    states = {}
    for stage, units in stage_groups(experiment, paths, simulated=simulated).items():
        per_unit = {unit: all(is_done(g) for g in groups) for unit, groups in units.items()}
        states[stage] = {
            "complete": all(per_unit.values()),
            "units_complete": sum(per_unit.values()),
            "units_total": len(per_unit),
            "incomplete": [unit for unit, done in per_unit.items() if not done],
        }
    return states


def datastore_document(experiment: Experiment, experiment_dir, *, simulated=None) -> dict:
    """The content of ``datastore.json``."""
    return {
        "Version": DATASTORE_VERSION,
        "software": datastore.software_versions(),
        "manifest": experiment.summary(),
        "stages": stage_states(experiment, experiment_dir, simulated=simulated),
    }


def write_datastore_json(experiment: Experiment, experiment_dir, *, simulated=None) -> Path:
    paths = ExperimentPaths(experiment_dir)
    paths.datastore.mkdir(parents=True, exist_ok=True)
    return write_text(paths.datastore_json, canonical_json(datastore_document(experiment, experiment_dir,
                                                                                 simulated=simulated)))


def withdraw_datastore_json(experiment_dir):
    """Remove ``datastore.json`` when a run starts jobs that replace markers: a summary must never claim
    more than the markers show. Returns its bytes and modification time (ns), or None if there was none,
    for :func:`restore_datastore_json`."""
    path = ExperimentPaths(experiment_dir).datastore_json
    try:
        withdrawn = (path.read_bytes(), path.stat().st_mtime_ns)
    except FileNotFoundError:
        return None
    path.unlink(missing_ok=True)
    return withdrawn


def restore_datastore_json(experiment: Experiment, experiment_dir, withdrawn, *, simulated=None):
    """After a run: make ``datastore.json`` say what the markers show now, if the run withdrew it and did not
    write it again (it failed, or its targets did not include rule datastore), or if it is there (a marker
    may have been changed by hand since it was written). A summary that already says the same is left as
    it was, modification time included; a run that never had one gets none.

    Parameters
    ----------
    withdrawn : list
        What :func:`withdraw_datastore_json` returned in this run's onstart (empty if it did not run).
    """
    path = ExperimentPaths(experiment_dir).datastore_json
    if path.exists():
        old = (path.read_bytes(), path.stat().st_mtime_ns)
    elif withdrawn and withdrawn[0] is not None:
        old = withdrawn[0]
    else:
        return
    old_bytes, old_mtime_ns = old
    write_datastore_json(experiment, experiment_dir, simulated=simulated)
    if path.read_bytes() == old_bytes:
        os.utime(path, ns=(old_mtime_ns, old_mtime_ns))


def format_status(experiment: Experiment, experiment_dir) -> str:
    """A human-readable table of stage states (``merfishflow status``)."""
    lines = [f"experiment {Path(experiment_dir)}: {len(experiment.tiles)} tiles, {len(experiment.rounds)} rounds, "
             f"{experiment.n_bits} bits"]
    for stage, state in stage_states(experiment, experiment_dir).items():
        flag = "complete" if state["complete"] else "incomplete"
        line = f"  {stage:<16} {flag:<10} {state['units_complete']}/{state['units_total']}"
        if state["incomplete"]:
            shown = ", ".join(state["incomplete"][:8]) + (" ..." if len(state["incomplete"]) > 8 else "")
            line += f"  missing: {shown}"
        lines.append(line)
    return "\n".join(lines)

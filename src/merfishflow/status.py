"""Which stages are complete, read from the markers; ``datastore.json`` and ``merfishflow status``.

The markers (``.zattrs`` with ``complete: true``) are the truth; this module
only reads them. ``datastore.json`` is their summary, written by the
workflow's last job of every run (rule ``datastore``) from the markers the
run's jobs left, plus the manifest of tiles, rounds, bits and channels.
"""

from __future__ import annotations

from pathlib import Path

from . import datastore
from .fileio import canonical_json, write_text
from .metadata import Experiment
from .paths import ExperimentPaths

DATASTORE_VERSION = 1
# Stages in pipeline order; later issues add theirs here.
STAGES = ("init", "ingest")


def stage_groups(experiment: Experiment, paths: ExperimentPaths) -> dict:
    """``{stage: {tile or "experiment": [group paths]}}`` of every marker a stage writes."""
    ingest = {}
    for tile in experiment.tiles:
        groups = [paths.fiducial_group(tile, r) for r in experiment.rounds]
        groups += [paths.readout_group(tile, b) for b in experiment.bits]
        ingest[tile] = groups
    return {"init": {"experiment": [paths.calibrations]}, "ingest": ingest}


def stage_states(experiment: Experiment, experiment_dir) -> dict:
    """Per stage: ``complete`` (every unit done) and the per-tile state."""
    paths = ExperimentPaths(experiment_dir)
    states = {}
    for stage, units in stage_groups(experiment, paths).items():
        per_unit = {unit: all(datastore.is_complete(g) for g in groups) for unit, groups in units.items()}
        states[stage] = {
            "complete": all(per_unit.values()),
            "units_complete": sum(per_unit.values()),
            "units_total": len(per_unit),
            "incomplete": [unit for unit, done in per_unit.items() if not done],
        }
    return states


def datastore_document(experiment: Experiment, experiment_dir) -> dict:
    """The content of ``datastore.json``."""
    return {
        "Version": DATASTORE_VERSION,
        "software": datastore.software_versions(),
        "manifest": experiment.summary(),
        "stages": stage_states(experiment, experiment_dir),
    }


def write_datastore_json(experiment: Experiment, experiment_dir) -> Path:
    paths = ExperimentPaths(experiment_dir)
    paths.datastore.mkdir(parents=True, exist_ok=True)
    return write_text(paths.datastore_json, canonical_json(datastore_document(experiment, experiment_dir)))


def format_status(experiment: Experiment, experiment_dir) -> str:
    """A human-readable table of stage states (``merfishflow status``)."""
    lines = [f"experiment {Path(experiment_dir)}: {len(experiment.tiles)} tiles, {len(experiment.rounds)} rounds, "
             f"{experiment.n_bits} bits"]
    for stage, state in stage_states(experiment, experiment_dir).items():
        flag = "complete" if state["complete"] else "incomplete"
        line = f"  {stage:<10} {flag:<10} {state['units_complete']}/{state['units_total']}"
        if state["incomplete"]:
            shown = ", ".join(state["incomplete"][:8]) + (" ..." if len(state["incomplete"]) > 8 else "")
            line += f"  missing: {shown}"
        lines.append(line)
    return "\n".join(lines)

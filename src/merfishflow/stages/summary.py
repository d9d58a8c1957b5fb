"""The datastore stage: every stage's markers summarized into ``datastore.json`` (the workflow's last job).

The markers are the truth (docs/architecture.md, "The marker contract");
:mod:`merfishflow.workflow.status` reads them, this stage writes the summary.
"""

from __future__ import annotations

from pathlib import Path

from ..io.metadata import load_experiment
from ..workflow.status import write_datastore_json


def run_datastore_summary(experiment_dir, *, simulated=None, progress=print) -> Path:
    """Write ``datastore.json``: the manifest (from raw_data) and every stage's state (from its markers)."""
    experiment = load_experiment(experiment_dir, check_tiffs=False)
    path = write_datastore_json(experiment, experiment_dir, simulated=simulated)
    progress(f"wrote {path}")
    return path

"""The report stage: the experiment's QC report, ``qi2labdatastore/report/qc_report.html``.

Reads what the other stages wrote (:mod:`merfishflow.report`) and writes one
self-contained HTML page, atomically; the same datastore and config give the
same bytes; it depends on the datastore only, not on the config (a new export
does not rewrite it).
"""

from __future__ import annotations

from pathlib import Path

from ..io.fileio import write_text
from ..io.paths import ExperimentPaths
from ..report.qc import build_report


def write_qc_report(experiment_dir, tiles, progress=print) -> Path:
    """Build the QC report of a finished experiment and write it; returns its path.

    Parameters
    ----------
    experiment_dir : str or Path
    tiles : sequence of str
    progress : callable
    """
    paths = ExperimentPaths(experiment_dir)
    text = build_report(experiment_dir, list(tiles), progress=progress)
    paths.qc_report.parent.mkdir(parents=True, exist_ok=True)
    path = write_text(paths.qc_report, text)
    progress(f"wrote {path} ({len(text.encode()) / 1e6:.1f} MB)")
    return path

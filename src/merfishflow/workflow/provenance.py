"""What ran: one JSON file per workflow run with the config, the software versions and the git commit.

Run records live in ``<experiment>/logs/provenance/``, outside the datastore:
they carry the time of the run and the host, which the datastore's outputs
must not (they are byte-identical for the same inputs).
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from ..io.datastore import software_versions
from ..io.fileio import write_text
from ..io.paths import ExperimentPaths


def git_commit(repository) -> str:
    """The commit of the pipeline's checkout (with ``-dirty`` if it has changes), or ``"unknown"``."""
    try:
        commit = subprocess.run(["git", "-C", str(repository), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repository), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def record_run(experiment_dir, config: dict, workflow_dir) -> Path:
    """Write ``logs/provenance/run-<UTC time>.json`` for a run that is starting.

    Parameters
    ----------
    experiment_dir : str or Path
    config : dict
        The validated config the run uses.
    workflow_dir : str or Path
        The pipeline's checkout (for the git commit).
    """
    from importlib.metadata import version

    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    software = software_versions()
    software.update({name: version(name) for name in ("snakemake", "scikit-image", "pyarrow")})
    record = {
        "started_utc": stamp,
        "host": platform.node(),
        "command": sys.argv,
        "git_commit": git_commit(workflow_dir),
        "software": software,
        "python": platform.python_version(),
        "config": config,
    }
    path = ExperimentPaths(experiment_dir).run_record(stamp)
    return write_text(path, json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")

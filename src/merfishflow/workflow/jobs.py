"""Running a pipeline job from a Snakemake ``script:``: logging and clean failures.

Each script in scripts/ is three lines: it hands the ``snakemake`` object and
the package function to :func:`run_job`. Progress goes to the rule's log file
and to stderr; an error of ours (bad input, incomplete upstream data) is
reported as one clear line and a non-zero exit instead of a traceback.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from pathlib import Path

from ..errors import MerfishflowError


class JobLog:
    """Writes timestamped progress lines to a log file and stderr (logs are not datastore outputs)."""

    def __init__(self, path):
        self.path = Path(path) if path else None
        self._file = None
        self._start = time.monotonic()

    def __enter__(self):
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "w", encoding="utf-8")
        return self

    def __exit__(self, *exc):
        if self._file is not None:
            self._file.close()

    def __call__(self, message: str) -> None:
        line = f"[{time.monotonic() - self._start:8.1f} s] {message}"
        print(line, file=sys.stderr, flush=True)
        if self._file is not None:
            self._file.write(line + "\n")
            self._file.flush()


@contextmanager
def job(log_path):
    """Context for a job: yields a progress callable; our errors exit with status 1 and one line."""
    with JobLog(log_path) as log:
        try:
            yield log
        except MerfishflowError as err:
            log(f"ERROR: {err}")
            sys.exit(1)


def run_job(snakemake, function):
    """Call ``function(snakemake, progress)`` inside :func:`job`, logging to the rule's first log file."""
    log_path = snakemake.log[0] if len(snakemake.log) else None
    with job(log_path) as progress:
        function(snakemake, progress)

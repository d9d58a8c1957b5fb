"""Running a pipeline job from a Snakemake ``script:``: logging and clean failures.

Each script in scripts/ is three lines: it hands the ``snakemake`` object and
the package function to :func:`run_job`. Progress goes to the rule's log file
and to stderr; an error of ours (bad input, incomplete upstream data) is
reported as one clear line and a non-zero exit instead of a traceback.
"""

from __future__ import annotations

import errno
import os
import re
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


# A file system that refuses a write: what the user can fix (free space, quota, permissions, mounts).
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG}
# tensorstore reports an OS error as text: 'Error writing local file "<path>": ... [os_error_code='28']'.
_TS_FILE = re.compile(r'(?:writing|reading|opening|deleting|listing)[a-z ]*? file "([^"]+)"')
_TS_CODE = re.compile(r"os_error_code='?(\d+)|OS error (\d+)")


def storage_error_line(err: BaseException) -> str | None:
    """``"<path>: <cause>"`` for a write or read the file system refused, else None.

    Covers Python's ``OSError`` and tensorstore's ``ValueError`` text (which carries the failed path,
    the OS error code and often ~1 KB of spec JSON that is of no use to the user).
    """
    if isinstance(err, OSError) and err.errno in STORAGE_ERRNOS:
        return f"{err.filename or '(unknown file)'}: {os.strerror(err.errno)}"
    text = str(err)
    code, path = _TS_CODE.search(text), _TS_FILE.search(text)
    if isinstance(err, ValueError) and code and path:
        number = int(code.group(1) or code.group(2))
        if number in STORAGE_ERRNOS:
            return f"{path.group(1)}: {os.strerror(number)}"
    return None


@contextmanager
def job(log_path):
    """Context for a job: yields a progress callable; our errors and a refused write (full disk,
    quota, read-only) exit with status 1 and one line. Markers are written last, so nothing the
    job wrote is marked complete."""
    with JobLog(log_path) as log:
        try:
            yield log
        except MerfishflowError as err:
            log(f"ERROR: {err}")
            sys.exit(1)
        except (OSError, ValueError) as err:
            line = storage_error_line(err)
            if line is None:
                raise
            log(f"ERROR: {line}; the job stopped and marked nothing complete. Free space (or fix the file "
                "system), then rerun the same command")
            sys.exit(1)


def run_job(snakemake, function):
    """Call ``function(snakemake, progress)`` inside :func:`job`, logging to the rule's first log file."""
    log_path = snakemake.log[0] if len(snakemake.log) else None
    with job(log_path) as progress:
        function(snakemake, progress)

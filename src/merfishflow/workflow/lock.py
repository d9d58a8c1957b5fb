"""One run per experiment: a lock file inside the experiment folder, taken by the main Snakemake process.

Snakemake's own lock lives in the working directory's ``.snakemake/``, so two runs started from two
working directories (or ``snakemake --unlock`` in one of them) do not see each other. This lock is
``<experiment>/.merfishflow.lock`` (next to ``raw_data/``, not in the datastore), taken when a run is
about to start jobs (``onstart``) and released when it ends. A lock whose process is gone (same host,
pid no longer running or reused) is taken over; one from another host can only be removed by hand with
``merfishflow unlock <experiment>``.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from ..errors import MerfishflowError

LOCK_NAME = ".merfishflow.lock"


class ExperimentLocked(MerfishflowError):
    """Another run holds the experiment's lock."""


def lock_path(experiment_dir) -> Path:
    return Path(experiment_dir) / LOCK_NAME


def _process_start(pid: int):
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def _holder(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def holder_is_alive(holder) -> bool | None:
    """True/False for a holder on this host; None when it runs elsewhere (cannot be checked)."""
    if not isinstance(holder, dict) or holder.get("host") != socket.gethostname():
        return None
    start = _process_start(int(holder.get("pid", -1)))
    return start is not None and abs(start - float(holder.get("process_start", 0))) < 1.0


def _describe(holder) -> str:
    if not isinstance(holder, dict):
        return "an unreadable lock file"
    return f"pid {holder.get('pid')} on {holder.get('host')}, started in {holder.get('workdir')}"


def acquire(experiment_dir) -> Path:
    """Take the experiment's lock for this process.

    Raises
    ------
    ExperimentLocked
        Naming the experiment, the run that holds it and what to do.
    """
    path = lock_path(experiment_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "process_start": _process_start(os.getpid()),
          "workdir": os.getcwd()}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            alive = holder_is_alive(holder)
            if alive is False:
                # Its process is gone (killed, crashed): the lock is stale.
                path.unlink(missing_ok=True)
                continue
            if alive:
                raise ExperimentLocked(f"{Path(experiment_dir)}: another run is using this experiment "
                                       f"({_describe(holder)}); wait for it to finish, or stop it, then rerun") from None
            raise ExperimentLocked(f"{Path(experiment_dir)}: locked by {_describe(holder)} ({path}); if that run has "
                                   f"ended, remove the lock with `merfishflow unlock {experiment_dir}` and rerun") from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return path
    raise ExperimentLocked(f"{path}: could not take the experiment's lock; remove it with "
                           f"`merfishflow unlock {experiment_dir}`")


def release(experiment_dir) -> None:
    """Drop the lock if this process holds it."""
    path = lock_path(experiment_dir)
    holder = _holder(path)
    if isinstance(holder, dict) and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)


def unlock(experiment_dir) -> str:
    """Remove a lock left by a run that has ended (``merfishflow unlock``); a live run's lock stays."""
    path = lock_path(experiment_dir)
    if not path.exists():
        return f"{experiment_dir}: not locked"
    holder = _holder(path)
    if holder_is_alive(holder):
        raise ExperimentLocked(f"{experiment_dir}: a running process holds the lock ({_describe(holder)}); "
                               "stop it first")
    path.unlink(missing_ok=True)
    return f"{experiment_dir}: lock removed ({_describe(holder)})"

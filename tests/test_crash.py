"""Crash safety through the real workflow: SIGKILL the Snakemake controller (with its job) at many
points of a run, or SIGKILL one job mid-write, resume with the README's recovery command, and
compare every output byte for byte with an uninterrupted run (the ``demo_run`` fixture).

The README's recovery command is the interrupted command run twice, first with ``--unlock``:

    snakemake <same arguments> --unlock      # removes the lock a killed controller leaves
    snakemake <same arguments>               # redoes what is missing or incomplete

A killed controller leaves ``.snakemake/locks``, and the plain command then stops with
"Directory cannot be locked"; ``--unlock`` is harmless when there is no lock (a job killed under a
live controller leaves none), so it is the one procedure for every crash. ``rerun-incomplete`` (in
profiles/default) makes the second command redo the jobs the crash interrupted.

Where a kill lands is made deterministic, not left to timing: a ``sitecustomize`` module, put on
``PYTHONPATH`` for the interrupted runs only, makes the job that is about to write a chosen file
(through ``merfishflow.io.fileio.atomic``: every marker and product file) or to log a chosen progress
line report its pid and sleep. The test then SIGKILLs the controller's whole process group (the
controller and the paused job, as a power cut or ``kill -9`` of the session does) or only the job's
process. Everything else is the real workflow, unmodified.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import REPO, file_bytes, planned_jobs, run_snakemake, snakemake_env
from merfishflow.io import datastore
from merfishflow.io.paths import ExperimentPaths

pytestmark = pytest.mark.workflow

HOOK = '''
import os
_AT = os.environ.get("MFF_TEST_PAUSE_AT")        # regex on the path about to be written
_LOG = os.environ.get("MFF_TEST_PAUSE_LOG")      # or a regex on a job's progress line
if _AT or _LOG:
    import re
    import time

    def _pause(what):
        with open(os.environ["MFF_TEST_PAUSE_READY"], "a") as f:
            f.write(f"{os.getpid()} {what}\\n")
        time.sleep(600)

    if _AT:
        from merfishflow.io import fileio
        _atomic = fileio.atomic

        def atomic(path, write):
            if re.search(_AT, str(path)):
                if os.environ.get("MFF_TEST_PAUSE_MODE") == "temp_written":
                    def write_then_pause(temp):   # killed after the temp file, before os.replace
                        write(temp)
                        _pause(path)
                    return _atomic(path, write_then_pause)
                _pause(path)
            return _atomic(path, write)

        fileio.atomic = atomic
    if _LOG:
        from merfishflow.workflow import jobs
        _call = jobs.JobLog.__call__

        def __call__(self, message):
            _call(self, message)
            if re.search(_LOG, message):
                _pause(message)

        jobs.JobLog.__call__ = __call__
'''


def command(workdir: Path, config: Path, *args) -> list:
    """The command of ``conftest.run_snakemake``: the one a user ran and runs again."""
    return [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
            "--configfile", str(config), "--cores", "2", *args]


def readme_recovery(workdir: Path, config: Path) -> None:
    """Exactly the README's recovery: the same command with ``--unlock``, then the same command."""
    run_snakemake(workdir, config, "--unlock")
    run_snakemake(workdir, config)


def run_until_paused(workdir, config, hook_dir, ready, *, at=None, log=None, mode="before"):
    """Start the run with the pause hook; return (process, paused job's pid, what it was writing)."""
    env = snakemake_env()
    env["PYTHONPATH"] = os.pathsep.join([str(hook_dir), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["MFF_TEST_PAUSE_READY"] = str(ready)
    env["MFF_TEST_PAUSE_MODE"] = mode
    if at:
        env["MFF_TEST_PAUSE_AT"] = at
    if log:
        env["MFF_TEST_PAUSE_LOG"] = log
    if ready.exists():
        ready.unlink()
    out = open(workdir / f"run-{time.monotonic_ns()}.out", "w")
    proc = subprocess.Popen(command(workdir, config), cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while not (ready.exists() and ready.read_text().endswith("\n")):
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None
            out.close()
            raise AssertionError(f"the run ended before pausing at {at or log} (rc {proc.returncode}):\n"
                                 + Path(out.name).read_text()[-4000:])
        time.sleep(0.02)
    out.close()
    pid, what = ready.read_text().split(" ", 1)
    return proc, int(pid), what.strip()


def kill_controller(proc):
    """SIGKILL the controller's process group (the controller and its running job)."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


@pytest.fixture
def hook_dir(tmp_path):
    folder = tmp_path / "hook"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(HOOK)
    return folder


STALE_TEMP = re.compile(r"(^|/)\.tmp\d+-[^/]+$")  # fileio.atomic's temp name: .tmp<pid>-<final name>


def assert_same_as_uninterrupted(clean: Path, experiment_dir: Path) -> list:
    """Every file byte-identical; returns the stale temp files a kill left (compared apart)."""
    stale = []
    for part in ("qi2labdatastore", "raw_data", "ground_truth"):
        a, b = file_bytes(clean / part), file_bytes(experiment_dir / part)
        for name in [n for n in b if STALE_TEMP.search(n)]:
            stale.append(f"{part}/{name}")
            del b[name]
        assert sorted(b) == sorted(a), f"{part}: extra {sorted(set(b) - set(a))}, missing {sorted(set(a) - set(b))}"
        assert [name for name in a if a[name] != b[name]] == [], part
    return stale


def assert_no_stale_temp(stale):
    """A job killed between writing its temp file and ``os.replace`` leaves ``.tmp<pid>-<name>``;
    ``fileio.atomic`` removes such leftovers when the file is written again."""
    assert stale == [], f"stale temp files left by the killed job: {stale}"


# (what the paused job is about to write, how far it got, the stage it is in)
KILL_POINTS = [
    # simulate: some raw TIFFs written, one sitting in its temp file, the rest not yet.
    (r"raw_data/tile0001/round0001\.tif$", "temp_written", "simulate"),
    # ingest: the arrays and the readout bits' markers written, the fiducial's marker not.
    (r"polyDT/tile0001/round0002\.zarr/\.zattrs$", "before", "ingest"),
    (r"/decon_data/\.zattrs$", "before", "deconvolve"),
    (r"/registered_decon_data/\.zattrs$", "temp_written", "register_local"),
    (r"/decoded/tile0001_decoded_features\.parquet$", "temp_written", "decode"),
    (r"/counts/", "before", "assign"),
    (r"datastore\.json$", "before", "datastore"),
]


def test_controller_killed_at_every_stage_then_readme_recovery_is_identical(demo_run, tmp_path, hook_dir):
    _, _, clean = demo_run
    workdir = tmp_path / "run"
    workdir.mkdir()
    config = workdir / "config.yaml"
    config.write_text((demo_run[1]).read_text())
    experiment_dir = workdir / "experiment"
    ready = tmp_path / "paused"
    stopped_in = []
    for k, (at, mode, stage) in enumerate(KILL_POINTS):
        # The first run is the user's command; every later one is the README's recovery, killed again.
        if k > 0:
            run_snakemake(workdir, config, "--unlock")
        proc, pid, path = run_until_paused(workdir, config, hook_dir, ready, at=at, mode=mode)
        assert psutil.Process(pid).parent().pid == proc.pid or proc.pid in [p.pid for p in
                                                                            psutil.Process(pid).parents()]
        kill_controller(proc)
        gone, alive = psutil.wait_procs([psutil.Process(pid)] if psutil.pid_exists(pid) else [], timeout=20)
        assert alive == [], "the paused job outlived the kill of its process group"
        target = workdir / path  # relative to the working directory, or absolute
        stopped_in.append((stage, path))
        if target.name == ".zattrs":
            assert not datastore.is_complete(target.parent), f"{target} is marked complete after the kill"
        else:
            assert not target.exists(), f"{target} exists after the kill"
        assert (workdir / ".snakemake" / "locks").is_dir() and any((workdir / ".snakemake" / "locks").iterdir())
        # Without --unlock the README's command is refused: that is why the README says to unlock.
        if k == 0:
            refused = run_snakemake(workdir, config, check=False)
            assert refused.returncode != 0 and "Directory cannot be locked" in refused.stdout + refused.stderr
    assert [s for s, _ in stopped_in] == [s for _, _, s in KILL_POINTS], stopped_in

    readme_recovery(workdir, config)
    stale = assert_same_as_uninterrupted(clean, experiment_dir)
    assert planned_jobs(workdir, config) == {}
    assert_no_stale_temp(stale)


def test_job_killed_mid_write_then_readme_recovery_is_identical(demo_run, demo_copy, hook_dir, tmp_path):
    """SIGKILL only the job's own process (the controller lives on and reports the failure)."""
    _, _, clean = demo_run
    workdir, config, experiment_dir = demo_copy
    paths = ExperimentPaths(experiment_dir)
    # Make one ingest job run again: its fiducial marker is gone (as after a crash).
    group = paths.fiducial_group("tile0001", "round0003")
    datastore.remove_marker(group)
    ready = tmp_path / "paused"
    # Paused after the fiducial's and the first readout's planes were handed to tensorstore,
    # before the second readout's arrays exist or any marker is written.
    proc, pid, line = run_until_paused(workdir, config, hook_dir, ready,
                                       log=r"tile0001 round0003 readout_561: planes")
    job = psutil.Process(pid)
    cmdline = " ".join(job.cmdline())
    assert ".snakemake/scripts/" in cmdline and "ingest.py" in cmdline, cmdline
    assert proc.pid in [p.pid for p in job.parents()]
    os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode not in (0, None)
    assert not (workdir / ".snakemake" / "locks").exists() or not any((workdir / ".snakemake" / "locks").iterdir())
    for bit in ("bit007", "bit008"):
        assert not datastore.is_complete(paths.readout_group("tile0001", bit))
    assert not datastore.is_complete(group)

    readme_recovery(workdir, config)
    stale = assert_same_as_uninterrupted(clean, experiment_dir)
    assert planned_jobs(workdir, config) == {}
    assert_no_stale_temp(stale)

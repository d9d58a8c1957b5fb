"""One run per experiment: the lock inside the experiment folder (merfishflow.workflow.lock)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, run_snakemake, snakemake_env, write_config
from merfishflow.io import datastore
from merfishflow.workflow.lock import LOCK_NAME

pytestmark = pytest.mark.workflow
CALIBRATIONS = "qi2labdatastore/calibrations.zarr"


def test_a_second_run_from_another_working_directory_is_refused_in_seconds(tmp_path):
    experiment = tmp_path / "experiment"
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    config1 = write_config(first / "config.yaml", experiment)
    config2 = write_config(second / "config.yaml", experiment)
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(first),
           "--configfile", str(config1), "--cores", "1"]
    running = subprocess.Popen(cmd, cwd=first, env=snakemake_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (experiment / LOCK_NAME).exists():
            assert running.poll() is None and time.monotonic() < deadline, "the first run never took the lock"
            time.sleep(0.2)
        holder = json.loads((experiment / LOCK_NAME).read_text())
        started = time.monotonic()
        # --forcerun: jobs to run whatever the first run has done so far (a run with nothing to do locks nothing).
        refused = run_snakemake(second, config2, f"{experiment}/{CALIBRATIONS}/.zattrs", "--forcerun", "init",
                                check=False)
        elapsed = time.monotonic() - started
        assert running.poll() is None, "the first run must still be running for this test to mean anything"
        text = refused.stdout + refused.stderr
        assert refused.returncode != 0
        assert f"{experiment}: another run is using this experiment (pid {holder['pid']}" in text, text[-3000:]
        # Refused as soon as the DAG is built: within a few seconds of what a dry run of the same command takes
        # (on a loaded 2-core machine, Snakemake's start alone takes 10-30 s).
        started = time.monotonic()
        run_snakemake(second, config2, f"{experiment}/{CALIBRATIONS}/.zattrs", "--forcerun", "init", "-n")
        assert elapsed < time.monotonic() - started + 10, elapsed
        # The refused run withdrew nothing and wrote no provenance record into the experiment.
        assert json.loads((experiment / LOCK_NAME).read_text()) == holder
    finally:
        if running.poll() is None:
            os.killpg(running.pid, signal.SIGKILL)
        running.wait()
    # The killed run's lock is stale (its process is gone): the next run takes it over, and releases it.
    assert (experiment / LOCK_NAME).exists()
    run_snakemake(second, config2, f"{experiment}/{CALIBRATIONS}/.zattrs", "--forcerun", "init")
    assert datastore.is_complete(experiment / CALIBRATIONS)
    assert not (experiment / LOCK_NAME).exists()


def test_a_lock_from_another_host_is_removed_only_by_merfishflow_unlock(tmp_path):
    experiment = tmp_path / "experiment"
    experiment.mkdir()
    lock = experiment / LOCK_NAME
    lock.write_text(json.dumps({"pid": 1, "host": "elsewhere", "process_start": 0.0, "workdir": "/x"}))
    config = write_config(tmp_path / "config.yaml", experiment)
    result = run_snakemake(tmp_path, config, f"{experiment}/{CALIBRATIONS}/.zattrs", check=False)
    assert result.returncode != 0
    assert (f"{experiment}: locked by pid 1 on elsewhere, started in /x ({lock}); if that run has ended, remove the "
            f"lock with `merfishflow unlock {experiment}`") in result.stdout + result.stderr
    assert not (experiment / "qi2labdatastore").exists()
    other = tmp_path / "other_experiment"
    other.mkdir()
    (other / LOCK_NAME).write_text(lock.read_text())
    # `snakemake --unlock` releases Snakemake's own lock of the working directory, never an experiment's.
    run_snakemake(tmp_path, config, "--unlock")
    assert lock.exists()
    out = subprocess.run([sys.executable, "-m", "merfishflow.cli", "unlock", str(experiment)],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "lock removed" in out.stdout
    assert not lock.exists() and (other / LOCK_NAME).exists(), "unlocking is per experiment"
    run_snakemake(tmp_path, config, f"{experiment}/{CALIBRATIONS}/.zattrs")

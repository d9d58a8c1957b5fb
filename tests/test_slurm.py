"""The workflow on a real SLURM cluster, through snakemake-executor-plugin-slurm (docs/slurm.md).

Needs the single-node test cluster of ``ci/slurm/start-cluster.sh`` (root, Debian
packages slurmctld, slurmd, slurm-client and munge); ``.ci/run`` starts it before
pytest. Locally::

    sudo ci/slurm/start-cluster.sh
    .venv/bin/python -m pytest tests/test_slurm.py
    sudo ci/slurm/stop-cluster.sh

Without a cluster the test is skipped, with the reason; with
``MERFISHFLOW_REQUIRE_SLURM=1`` (set by CI) it fails instead, so CI cannot pass
without having run it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time

import pytest
import yaml

from conftest import REPO, file_bytes, run_snakemake, write_config

pytestmark = pytest.mark.workflow

SHIPPED_PROFILE = REPO / "profiles" / "slurm"
TEST_PROFILE = REPO / "profiles" / "slurm-test"
START = "sudo ci/slurm/start-cluster.sh"


def _unavailable(reason: str):
    if os.environ.get("MERFISHFLOW_REQUIRE_SLURM") == "1":
        pytest.fail(f"MERFISHFLOW_REQUIRE_SLURM=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def cluster_cpus() -> int:
    """CPUs of the test cluster's node; skips (or fails) when no cluster answers.

    Session-scoped and requested before ``demo_run``, so a skip costs no local run.
    """
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        _unavailable(f"no SLURM client (sbatch/sinfo) on PATH; start the test cluster with `{START}` (root, apt)")
    try:
        out = subprocess.run(["sinfo", "--noheader", "--format=%T %c"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        _unavailable(f"sinfo did not answer in 20 s; start the test cluster with `{START}`")
    nodes = [line.split() for line in out.stdout.splitlines() if line.strip()]
    usable = [int(cpus) for state, cpus in nodes if state.rstrip("*~#") in ("idle", "mixed", "allocated")]
    if out.returncode != 0 or not usable:
        _unavailable(f"no SLURM node is up (sinfo: {(out.stdout + out.stderr).strip()!r}); "
                     f"start the test cluster with `{START}`")
    return max(usable)


def _shipped_set_resources(max_cpus: int) -> list[str]:
    """profiles/slurm's set-resources as command-line values, cpus_per_task capped at the node's CPUs.

    A request for more CPUs than the node has is refused at submission
    (EnforcePartLimits=ALL); the shipped profile asks 4 for simulate and the CI
    node may have 2. A command-line --set-resources replaces the profile's whole
    list, so every other entry is passed on unchanged.
    """
    profile = yaml.safe_load((SHIPPED_PROFILE / "config.yaml").read_text())
    values = []
    for rule, resources in (profile.get("set-resources") or {}).items():
        for name, value in resources.items():
            if name == "cpus_per_task" and isinstance(value, int):
                value = min(value, max_cpus)
            values.append(f"{rule}:{name}={value}")
    return values


def _slurm_jobs(name: str) -> dict[str, str]:
    """``{job id: state}`` of the jobs named ``name`` that slurmctld still remembers (MinJobAge)."""
    out = subprocess.run(["squeue", "--states=all", "--noheader", "--format=%i|%T", "--name", name],
                         capture_output=True, text=True, timeout=20, check=True)
    return dict(line.split("|", 1) for line in out.stdout.split())


def test_demo_on_slurm_matches_local_run(cluster_cpus, demo_run, tmp_path):
    cpus = cluster_cpus
    _, _, local_experiment = demo_run

    workdir = tmp_path / "slurm_run"
    workdir.mkdir()
    config = write_config(workdir / "config.yaml", "experiment")
    started = time.monotonic()
    result = run_snakemake(workdir, config,
                           "--workflow-profile", str(SHIPPED_PROFILE), "--profile", str(TEST_PROFILE),
                           "--set-resources", *_shipped_set_resources(cpus))
    elapsed = time.monotonic() - started
    log = result.stdout + result.stderr

    # The jobs went through sbatch: every rule but `all` ran as a cluster job.
    run_id = re.search(r"SLURM run ID: (\S+)", log)
    assert run_id, log[-3000:]
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", log)
    local_rules = set(re.findall(r"^localrule (\w+):", log, flags=re.M))
    assert local_rules <= {"all"}, f"ran outside SLURM: {sorted(local_rules - {'all'})}"
    steps = re.findall(r"(\d+) of (\d+) steps \(100%\) done", log)
    assert steps, log[-3000:]
    n_jobs = int(steps[-1][1]) - 1  # without `all`
    # Grouping (profiles/slurm-test): far fewer submissions than jobs.
    assert 0 < len(submitted) < n_jobs / 2, f"{len(submitted)} sbatch submissions for {n_jobs} jobs"
    remembered = _slurm_jobs(run_id.group(1))
    assert remembered, "slurmctld has no record of the run's jobs"
    assert set(remembered) <= set(submitted)
    assert set(remembered.values()) == {"COMPLETED"}, remembered

    # Same bytes as the local run of the same config.
    slurm_store = file_bytes(workdir / "experiment" / "qi2labdatastore")
    local_store = file_bytes(local_experiment / "qi2labdatastore")
    assert sorted(slurm_store) == sorted(local_store)
    differ = [path for path in local_store if slurm_store[path] != local_store[path]]
    assert not differ, f"{len(differ)} files differ from the local run, e.g. {differ[:5]}"
    assert file_bytes(workdir / "experiment" / "raw_data") == file_bytes(local_experiment / "raw_data")

    print(f"SLURM run: {n_jobs} jobs in {len(submitted)} sbatch submissions, {elapsed:.0f} s")

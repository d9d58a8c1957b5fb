"""Shared helpers: tiny simulated experiments and Snakemake runs in temporary folders."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

# Small enough that a whole workflow runs in ~10 s on 2 cores; 8 bits allow 14
# weight-4 codewords with Hamming distance 4.
TINY_SIMULATION = {
    "seed": 3,
    "n_tiles_yx": [1, 2],
    "n_rounds": 4,
    "n_readout_channels": 2,
    "image_shape_zyx": [6, 48, 48],
    "n_genes": 8,
    "n_blanks": 2,
}


def write_config(path: Path, experiment_dir, *, simulated=True, simulation=None, **sections) -> Path:
    config = {"experiment_dir": str(experiment_dir),
              "simulation": {"enabled": simulated, "params": simulation or TINY_SIMULATION}}
    config.update(sections)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def snakemake_env():
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def run_snakemake(workdir: Path, configfile: Path, *args, check=True) -> subprocess.CompletedProcess:
    """``snakemake -s Snakefile --directory workdir --configfile configfile --cores 2 ARGS``."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(configfile), "--cores", "2", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, env=snakemake_env(), cwd=workdir)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


def planned_jobs(workdir: Path, configfile: Path, *args) -> dict:
    """Job counts per rule of a dry run (``{}`` when nothing is to be done)."""
    result = run_snakemake(workdir, configfile, *args, "-n", "--quiet", "rules")
    counts = {}
    text = result.stdout + result.stderr
    if "Nothing to be done" in text:
        return counts
    in_table = False
    for line in text.splitlines():
        parts = line.split()
        if parts[:2] == ["job", "count"]:
            in_table = True
            continue
        if in_table and len(parts) == 2 and parts[1].isdigit():
            if parts[0] == "total":
                break
            counts[parts[0]] = int(parts[1])
    return counts


def file_bytes(root: Path) -> dict:
    """``{relative path: bytes}`` of every file under ``root``."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def pristine(tmp_path_factory):
    """raw_data/ and ground_truth/ of the tiny simulated experiment (shared, do not modify; copy it)."""
    from merfishflow.simulation import simulate_experiment

    root = tmp_path_factory.mktemp("pristine") / "experiment"
    simulate_experiment(root, TINY_SIMULATION)
    return root


@pytest.fixture
def experiment(pristine, tmp_path):
    """A private copy of :func:`pristine` that a test may change."""
    root = tmp_path / "experiment"
    shutil.copytree(pristine, root)
    return root


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """One complete workflow run on the tiny simulated experiment (shared, do not modify)."""
    workdir = tmp_path_factory.mktemp("demo_run")
    config = write_config(workdir / "config.yaml", "experiment")
    run_snakemake(workdir, config)
    return workdir, config, workdir / "experiment"


@pytest.fixture
def demo_copy(demo_run, tmp_path):
    """A private copy of the finished run (workdir, config, experiment) that a test may change."""
    workdir, _, _ = demo_run
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy, symlinks=True)
    config = write_config(copy / "config.yaml", "experiment")
    return copy, config, copy / "experiment"

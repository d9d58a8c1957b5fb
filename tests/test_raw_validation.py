"""``merfishflow validate`` reads every TIFF's header; what it passes, the run accepts (docs/bad_inputs.md)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from conftest import TINY_SIMULATION, planned_jobs, run_snakemake, write_config
from merfishflow.io import datastore
from merfishflow.io.metadata import load_experiment

BOM = b"\xef\xbb\xbf"
TIFF = "raw_data/tile0001/round0002.tif"


@pytest.fixture
def experiment(pristine, tmp_path):
    root = tmp_path / "run" / "experiment"
    shutil.copytree(pristine / "raw_data", root / "raw_data")
    return root


def validate(experiment_dir):
    return subprocess.run([sys.executable, "-m", "merfishflow.cli", "validate", str(experiment_dir)],
                          capture_output=True, text=True)


def nan_dark_frame(root):
    path = root / "raw_data/camera_dark_frame.tif"
    dark = tifffile.imread(path).astype(np.float32)
    dark[3, 4] = np.inf
    tifffile.imwrite(path, dark)


def fewer_pages(root):
    path = root / TIFF
    tifffile.imwrite(path, tifffile.imread(path).reshape(-1, 48, 48)[:-1])


@pytest.mark.parametrize("name, change, words", [
    ("zero-bytes", lambda r: (r / TIFF).write_bytes(b""), "round0002.tif: empty file (0 bytes)"),
    ("truncated", lambda r: os.truncate(r / TIFF, 30000), "round0002.tif: truncated or damaged: 30000 bytes"),
    ("truncated-end", lambda r: os.truncate(r / TIFF, (r / TIFF).stat().st_size - 4000),
     "round0002.tif: truncated or damaged"),
    ("wrong-page-count", fewer_pages, "round0002.tif: 17 pages; expected 3 channels x 6 z-planes = 18 pages"),
    ("dark-frame-inf", nan_dark_frame, "camera_dark_frame.tif: contains NaN or infinite values"),
])
def test_validate_refuses_what_the_run_would_refuse(experiment, name, change, words):
    assert validate(experiment).returncode == 0
    change(experiment)
    result = validate(experiment)
    assert result.returncode == 1 and words in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr


@pytest.mark.workflow
def test_a_byte_order_mark_in_every_file_is_accepted_by_validate_and_by_the_run(experiment, pristine):
    for name in ("experiment.yaml", "codebook.csv", "exp_order.csv", "stage_positions.csv"):
        path = experiment / "raw_data" / name
        path.write_bytes(BOM + path.read_bytes())
    result = validate(experiment)
    assert result.returncode == 0, result.stderr
    assert load_experiment(experiment) == load_experiment(pristine)
    workdir = experiment.parent
    config = write_config(workdir / "config.yaml", "experiment", simulated=False)
    assert planned_jobs(workdir, config)["ingest"] == 2
    # The init job reads the same files again: it accepts them too.
    run_snakemake(workdir, config, "experiment/qi2labdatastore/calibrations.zarr/.zattrs")
    assert datastore.is_complete(experiment / "qi2labdatastore" / "calibrations.zarr")


@pytest.mark.workflow
def test_status_of_a_real_experiment_shows_only_the_stages_it_runs(pristine, tmp_path):
    """A real experiment (here a copy of a simulated one, ground_truth/ kept) run with simulation.enabled: false."""
    experiment = tmp_path / "experiment"
    shutil.copytree(pristine, experiment)
    config = write_config(tmp_path / "config.yaml", "experiment", simulated=False)
    run_snakemake(tmp_path, config, "experiment/qi2labdatastore/calibrations.zarr/.zattrs")
    status = subprocess.run([sys.executable, "-m", "merfishflow.cli", "status", str(experiment)],
                            capture_output=True, text=True)
    assert status.returncode == 0, status.stderr
    assert "  init             complete" in status.stdout and "  assign " in status.stdout, status.stdout
    assert "evaluate" not in status.stdout, status.stdout


@pytest.mark.workflow
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="mounting a small tmpfs needs root")
def test_a_full_disk_is_one_error_line_naming_the_path_and_nothing_is_marked_complete(experiment):
    """The datastore folder is a 32 KiB tmpfs: the init job's arrays do not fit (a real ENOSPC from tensorstore)."""
    datastore_dir = experiment / "qi2labdatastore"
    datastore_dir.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", str(datastore_dir)], check=True)
    try:
        workdir = experiment.parent
        config = write_config(workdir / "config.yaml", "experiment", simulated=False)
        result = run_snakemake(workdir, config, "experiment/qi2labdatastore/calibrations.zarr/.zattrs", check=False)
        assert result.returncode != 0
        log = (experiment / "logs/init/init.log").read_text()
        last = log.splitlines()[-1].split("] ", 1)[1]
        assert "Traceback" not in log and "tensorstore_spec" not in log, log
        assert last.startswith(f"ERROR: {datastore_dir}/calibrations.zarr/") and "No space left on device" in last, log
        assert last in result.stdout + result.stderr
        assert not datastore.is_complete(datastore_dir / "calibrations.zarr")
    finally:
        subprocess.run(["umount", str(datastore_dir)], check=True)

"""The workflow through Snakemake: lint, reruns, crashes, determinism and clean failures."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from conftest import (REPO, TINY_SIMULATION, file_bytes, planned_jobs, run_snakemake, snakemake_env,
                      write_config)
from merfishflow.io import datastore
from merfishflow.errors import IncompleteDataError, InputError
from merfishflow.stages.ingest import CorrectionParams, run_ingest
from merfishflow.io.metadata import load_experiment
from merfishflow.io.paths import ExperimentPaths
from merfishflow.simulation import simulate_experiment
from merfishflow.workflow.status import STAGES, stage_states

pytestmark = pytest.mark.workflow

N_ROUNDS = TINY_SIMULATION["n_rounds"]
N_TILES = TINY_SIMULATION["n_tiles_yx"][0] * TINY_SIMULATION["n_tiles_yx"][1]


def test_lint_reports_nothing():
    result = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=REPO, capture_output=True, text=True,
                            env=snakemake_env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr


def test_demo_run_writes_the_datastore(demo_run):
    _, _, experiment_dir = demo_run
    paths = ExperimentPaths(experiment_dir)
    doc = json.loads(paths.datastore_json.read_text())
    assert doc["Version"] == 1
    assert doc["manifest"]["tiles"] == ["tile0000", "tile0001"]
    assert len(doc["manifest"]["rounds"]) == N_ROUNDS
    assert all(state["complete"] for state in doc["stages"].values())
    assert set(doc["stages"]) == set(STAGES)
    for tile in doc["manifest"]["tiles"]:
        for round_ in doc["manifest"]["rounds"]:
            attrs = datastore.read_marker(paths.fiducial_group(tile, round_))
            assert attrs["stage_zyx_um"] == load_experiment(experiment_dir).stage_position(tile)
            assert len(attrs["bit_linker"]) == 2
        for bit in doc["manifest"]["bits"]:
            attrs = datastore.read_marker(paths.readout_group(tile, bit))
            assert doc["manifest"]["bit_linker"][bit] == f"round{attrs['bit_linker']:04d}"
            assert attrs["wavelengths_um"][1] in (0.59, 0.68)
    assert (paths.calibrations / ".zgroup").is_file()
    assert datastore.read_array(paths.calibrations, "psf_data").shape[0] == 3


def test_rerun_with_nothing_changed_runs_nothing(demo_copy):
    workdir, config, _ = demo_copy
    assert planned_jobs(workdir, config) == {}


def test_changing_a_correction_parameter_reruns_only_correction(demo_copy):
    workdir, config, _ = demo_copy
    write_config(config, "experiment", correction={"hot_pixel_sigma": 12.0})
    jobs = planned_jobs(workdir, config)
    per_tile = {"ingest", "deconvolve", "register_local", "decode", "segment"}
    assert set(jobs) == per_tile | {"register_global", "filter_spots", "evaluate", "assign", "qc_report",
                                    "datastore", "all"}
    assert all(jobs[name] == N_TILES for name in per_tile)


def test_two_runs_from_scratch_are_byte_identical(demo_run, tmp_path):
    _, _, first = demo_run
    config = write_config(tmp_path / "config.yaml", "experiment")
    run_snakemake(tmp_path, config)
    a = file_bytes(first / "qi2labdatastore")
    b = file_bytes(tmp_path / "experiment" / "qi2labdatastore")
    assert sorted(a) == sorted(b)
    different = [name for name in a if a[name] != b[name]]
    assert different == []
    assert file_bytes(first / "raw_data") == file_bytes(tmp_path / "experiment" / "raw_data")


def test_crash_mid_write_leaves_nothing_complete_and_rerun_is_identical(demo_run, demo_copy):
    _, _, clean = demo_run
    workdir, config, experiment_dir = demo_copy
    paths = ExperimentPaths(experiment_dir)
    calls = []

    def crash_after_two_slabs(message):
        calls.append(message)
        if len(calls) == 2:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        run_ingest(experiment_dir, "tile0001", "round0002", [0, 0, 0], CorrectionParams(),
                   progress=crash_after_two_slabs, slab_planes=2)
    group = paths.fiducial_group("tile0001", "round0002")
    assert any((group / "camera_data").iterdir()), "the crash should come after some chunks were written"
    with pytest.raises(IncompleteDataError, match="missing"):
        datastore.read_array(group, "corrected_data")
    for bit in ("bit005", "bit006"):
        assert not datastore.is_complete(paths.readout_group("tile0001", bit))
    states = stage_states(load_experiment(experiment_dir), experiment_dir)
    assert states["ingest"]["incomplete"] == ["tile0001"]

    jobs = planned_jobs(workdir, config)
    assert jobs == {"ingest": 1, "deconvolve": 1, "register_local": 1, "register_global": 1,
                    "decode": 2, "filter_spots": 1, "evaluate": 1, "segment": 2, "assign": 1, "qc_report": 1,
                    "datastore": 1, "all": 1}
    run_snakemake(workdir, config)
    assert file_bytes(experiment_dir / "qi2labdatastore") == file_bytes(clean / "qi2labdatastore")


def test_adding_a_tile_runs_only_the_new_tiles_jobs(tmp_path):
    experiment_dir = tmp_path / "experiment"
    simulate_experiment(experiment_dir, TINY_SIMULATION)
    stage_csv = experiment_dir / "raw_data" / "stage_positions.csv"
    full = stage_csv.read_text()
    stage_csv.write_text("".join(full.splitlines(keepends=True)[:2]))  # header + tile 0
    config = write_config(tmp_path / "config.yaml", "experiment", simulated=False)
    run_snakemake(tmp_path, config)
    tile0 = experiment_dir / "qi2labdatastore" / "polyDT" / "tile0000"

    def tile0_files():
        return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in tile0.rglob("*")
                if p.is_file() and "global_registration" not in p.parts}

    before = tile0_files()

    stage_csv.write_text(full)
    result = run_snakemake(tmp_path, config, "-n")
    jobs = planned_jobs(tmp_path, config)
    # Global registration is experiment-wide: a new tile changes every tile's refined position.
    # Decoding and segmentation use the tiles' global placement, so both tiles are redone.
    assert jobs == {"ingest": 1, "deconvolve": 1, "register_local": 1, "register_global": 1, "decode": 2, "filter_spots": 1,
                    "segment": 2, "assign": 1, "qc_report": 1, "datastore": 1, "all": 1}
    assert "tile=tile0001" in result.stdout
    run_snakemake(tmp_path, config)
    assert tile0_files() == before
    doc = json.loads((experiment_dir / "qi2labdatastore" / "datastore.json").read_text())
    assert doc["manifest"]["tiles"] == ["tile0000", "tile0001"]
    assert all(state["complete"] for state in doc["stages"].values())


# Bad input through the whole workflow: the message reaches the user and nothing is marked complete.
def test_bad_config_value_is_named_before_any_job(tmp_path):
    config = write_config(tmp_path / "config.yaml", "experiment", correction={"hot_pixel_sigma": "high"})
    result = run_snakemake(tmp_path, config, check=False)
    assert result.returncode != 0
    text = result.stdout + result.stderr
    assert "correction.hot_pixel_sigma" in text and "'high' is not of type 'number'" in text
    assert not (tmp_path / "experiment").exists()


def test_missing_config_key_is_named(tmp_path):
    # The repository's config/config.yaml is loaded first and provides experiment_dir;
    # an empty value given on the command line must still be caught.
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
         "--cores", "1", "-n", "--config", "experiment_dir="],
        capture_output=True, text=True, env=snakemake_env(), cwd=tmp_path)
    assert result.returncode != 0
    assert "key 'experiment_dir'" in result.stdout + result.stderr


def test_wrong_tiff_shape_fails_the_job_clearly(tmp_path):
    experiment_dir = tmp_path / "experiment"
    simulate_experiment(experiment_dir, TINY_SIMULATION)
    tiff = experiment_dir / "raw_data" / "tile0001" / "round0003.tif"
    data = tifffile.imread(tiff)
    tifffile.imwrite(tiff, data[:, :-1])  # one z-plane missing per channel
    config = write_config(tmp_path / "config.yaml", "experiment", simulated=False)
    result = run_snakemake(tmp_path, config, "--keep-going", check=False)
    assert result.returncode != 0
    log = (experiment_dir / "logs" / "ingest" / "tile0001.log").read_text()
    assert "experiment/raw_data/tile0001/round0003.tif: 15 pages" in log and "expected 3 channels x 6 z-planes = 18 pages" in log
    assert "Traceback" not in log
    paths = ExperimentPaths(experiment_dir)
    assert not datastore.is_complete(paths.fiducial_group("tile0001", "round0003"))
    assert not paths.datastore_json.exists()
    # The other tile finished (--keep-going) and stays complete; the failed tile's ingest job is one job, so
    # none of its rounds is marked complete.
    assert datastore.is_complete(paths.fiducial_group("tile0000", "round0003"))
    assert not datastore.is_complete(paths.fiducial_group("tile0001", "round0002"))


def test_corrected_data_matches_the_camera_model(demo_run):
    _, _, experiment_dir = demo_run
    paths = ExperimentPaths(experiment_dir)
    experiment = load_experiment(experiment_dir)
    dark = tifffile.imread(paths.raw / experiment.dark_frame).astype(np.float64)
    hot = np.loadtxt(experiment_dir / "ground_truth" / "hot_pixels.csv", delimiter=",", skiprows=1, ndmin=2)
    hot_yx = hot[:, :2].astype(int)
    for tile, round_ in (("tile0000", "round0000"), ("tile0001", "round0003")):
        for group in [paths.fiducial_group(tile, round_)] + [paths.readout_group(tile, b)
                                                             for b, _ in experiment.bits_of_round(round_)]:
            counts = datastore.read_array(group, "camera_data").astype(np.float64)
            corrected = datastore.read_array(group, "corrected_data").astype(np.float64)
            expected = np.clip((counts - dark) * experiment.e_per_adu, 0, None)
            ok = np.ones(corrected.shape[1:], bool)
            ok[hot_yx[:, 0], hot_yx[:, 1]] = False
            # Rounding to whole electrons, plus float32 arithmetic (relative 1e-6).
            assert (np.abs(corrected - expected) <= 0.5 + 1e-6 * (1 + expected))[:, ok].all()
            # Hot pixels: the raw counts stand far out, the corrected values do not.
            for y, x in hot_yx:
                window = corrected[:, max(y - 1, 0):y + 2, max(x - 1, 0):x + 2]
                assert np.all(corrected[:, y, x] <= window.max(axis=(1, 2)))
                raw_excess = counts[:, y, x] - np.median(counts[:, max(y - 1, 0):y + 2, max(x - 1, 0):x + 2],
                                                         axis=(1, 2))
                assert raw_excess.min() > 500


def test_status_command_reports_markers(demo_run):
    _, _, experiment_dir = demo_run
    result = subprocess.run([sys.executable, "-m", "merfishflow.cli", "status", str(experiment_dir)],
                            capture_output=True, text=True)
    assert result.returncode == 0
    for stage, units in (("init", 1), ("ingest", 2), ("deconvolve", 2), ("register_local", 2),
                         ("register_global", 2)):
        assert f"  {stage:<16} complete   {units}/{units}" in result.stdout


def test_stale_marker_copy_is_not_taken_as_complete(demo_copy):
    _, _, experiment_dir = demo_copy
    group = ExperimentPaths(experiment_dir).readout_group("tile0000", "bit001")
    attrs = json.loads((group / ".zattrs").read_text())
    del attrs["complete"]
    (group / ".zattrs").write_text(json.dumps(attrs))
    with pytest.raises(IncompleteDataError, match="not marked complete"):
        datastore.open_array(group, "corrected_data")
    assert not datastore.is_complete(group)


@pytest.mark.parametrize("change, words", [
    (lambda data: data[:2], "12 pages = 2 channels x 6 z-planes; experiment.yaml lists 3 channels"),
    (lambda data: data[:, :, :40], "pages of (40, 48) pixels; expected (Y, X) = (48, 48)"),
    (lambda data: data.astype(np.float32), "dtype float32; expected uint16 camera counts"),
])
def test_wrong_tiff_is_refused_before_writing(demo_copy, change, words):
    _, _, experiment_dir = demo_copy
    paths = ExperimentPaths(experiment_dir)
    tiff = paths.raw_tiff("tile0000", "round0001")
    tifffile.imwrite(tiff, change(tifffile.imread(tiff)))
    group = paths.fiducial_group("tile0000", "round0001")
    before = file_bytes(group)
    with pytest.raises(InputError) as info:
        run_ingest(experiment_dir, "tile0000", "round0001", [0, 0, 0], progress=lambda m: None)
    assert str(info.value).startswith(f"{tiff}: {words}")
    assert file_bytes(group) == before  # refused before touching the existing complete output


def test_exports_are_made_on_request(demo_copy):
    workdir, config, experiment_dir = demo_copy
    exports = ExperimentPaths(experiment_dir).exports
    assert [p.name for p in exports.iterdir()] == ["starfish_codebook.json"], "no tile is exported unless asked"
    target = exports / "tile0001_readouts.ome.tif"
    jobs = planned_jobs(workdir, config, str(target.relative_to(workdir)))
    assert jobs == {"export_ome": 1}
    run_snakemake(workdir, config, str(target.relative_to(workdir)))
    with tifffile.TiffFile(target) as tif:
        assert tif.series[0].axes == "CZYX" and tif.series[0].shape[0] == 2 * N_ROUNDS
    write_config(config, "experiment", exports={"tiles": ["tile0000"], "tiff": ["imagej"], "spacetx": False,
                                                "starfish_codebook": True})
    # A requested tile also gets its OME-Zarr view (exports.ome_zarr, on by default).
    assert planned_jobs(workdir, config) == {"export_imagej": 1, "export_ome_zarr": 1, "all": 1}
    write_config(config, "experiment", exports={"tiles": ["tile0009"]})
    result = run_snakemake(workdir, config, "-n", check=False)
    assert result.returncode != 0 and "exports.tiles names ['tile0009']" in result.stdout + result.stderr

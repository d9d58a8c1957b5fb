"""The user's raw data is never written, and the summary never claims more than the markers show.

Through the real workflow: a config with ``simulation.enabled: true`` (the demo's default, which users
copy) pointed at an experiment the simulator did not write must stop before any job with an error that
names the folder, leaving every raw byte as it was.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import TINY_SIMULATION, file_bytes, run_snakemake, snakemake_env, write_config
from merfishflow.errors import InputError
from merfishflow.io.paths import ExperimentPaths
from merfishflow.simulation import SimulationParams, simulate_experiment, simulation_target_problem
from merfishflow.workflow.status import stage_states

pytestmark = pytest.mark.workflow


@pytest.fixture
def real_experiment(tmp_path):
    """A complete raw_data/ that merfishflow's simulator did not mark: what a microscope writes."""
    root = tmp_path / "experiment"
    simulate_experiment(root, TINY_SIMULATION)
    ExperimentPaths(root).simulation_mark.unlink()
    return root


@pytest.mark.parametrize("with_ground_truth", [False, True])
def test_simulate_config_never_touches_a_real_raw_data(tmp_path, real_experiment, with_ground_truth):
    import shutil

    if not with_ground_truth:
        shutil.rmtree(real_experiment / "ground_truth")
    before = file_bytes(real_experiment)
    config = write_config(tmp_path / "config.yaml", real_experiment)
    for args in (("-n",), ()):
        result = run_snakemake(tmp_path, config, *args, check=False)
        assert result.returncode != 0
        text = result.stdout + result.stderr
        assert str(real_experiment) in text and "simulation.enabled: false" in text, text[-2000:]
        assert "Traceback" not in text
    assert file_bytes(real_experiment) == before
    assert not (real_experiment / "qi2labdatastore").exists()


def test_simulate_config_refuses_a_simulation_with_other_parameters(tmp_path):
    root = tmp_path / "experiment"
    simulate_experiment(root, TINY_SIMULATION)
    before = file_bytes(root)
    config = write_config(tmp_path / "config.yaml", root, simulation={**TINY_SIMULATION, "seed": 4})
    result = run_snakemake(tmp_path, config, "-n", check=False)
    assert result.returncode != 0
    assert "seed differ" in result.stdout + result.stderr
    assert file_bytes(root) == before
    # The same parameters are the simulator's own folder: nothing to refuse.
    assert simulation_target_problem(root, SimulationParams.from_dict(TINY_SIMULATION)) is None


def test_simulator_refuses_unmarked_folders_even_with_overwrite(real_experiment):
    before = file_bytes(real_experiment)
    with pytest.raises(InputError, match="did not write"):
        simulate_experiment(real_experiment, TINY_SIMULATION, overwrite=True)
    cli = subprocess.run([sys.executable, "-m", "merfishflow.cli", "simulate", str(real_experiment), "--overwrite"],
                         capture_output=True, text=True, env=snakemake_env())
    assert cli.returncode == 1 and "did not write" in cli.stderr and "Traceback" not in cli.stderr
    assert file_bytes(real_experiment) == before


def test_simulator_replaces_its_own_folder_with_overwrite(tmp_path):
    root = tmp_path / "experiment"
    simulate_experiment(root, TINY_SIMULATION)
    first = file_bytes(root)
    simulate_experiment(root, {**TINY_SIMULATION, "seed": 4}, overwrite=True)
    assert file_bytes(root) != first
    recorded = json.loads(ExperimentPaths(root).simulation_mark.read_text())
    assert recorded["seed"] == 4


def test_failed_rerun_leaves_a_truthful_summary(demo_copy):
    """A raw TIFF truncated after a complete run: the rerun fails in ingest, and datastore.json must then
    say that ingest (and everything after it) is incomplete, as the markers do."""
    workdir, config, experiment = demo_copy
    paths = ExperimentPaths(experiment)
    summary = json.loads(paths.datastore_json.read_text())
    assert summary["stages"]["ingest"]["complete"]
    paths.raw_tiff("tile0001", "round0002").write_bytes(b"")
    result = run_snakemake(workdir, config, check=False)
    assert result.returncode != 0
    summary = json.loads(paths.datastore_json.read_text())
    assert not summary["stages"]["ingest"]["complete"]
    assert "tile0001" in summary["stages"]["ingest"]["incomplete"]
    from merfishflow.io.metadata import load_experiment

    truth = stage_states(load_experiment(experiment, check_tiffs=False), experiment, simulated=True)
    assert summary["stages"] == truth


def test_an_export_only_run_keeps_the_summary(demo_copy):
    """Exports replace no stage marker: a run that only adds them neither withdraws datastore.json nor fails
    on it (rule all lists it)."""
    workdir, _, experiment = demo_copy
    summary = ExperimentPaths(experiment).datastore_json
    before = (summary.stat().st_mtime_ns, summary.read_bytes())
    config = write_config(workdir / "config.yaml", "experiment",
                          exports={"tiles": ["tile0000"], "tiff": ["imagej"], "what": "readouts"})
    run_snakemake(workdir, config)
    assert (summary.stat().st_mtime_ns, summary.read_bytes()) == before

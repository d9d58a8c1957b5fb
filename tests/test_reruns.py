"""Minimal reruns: stages rerun on the parsed values they use, not on file bytes or result-neutral keys."""

from __future__ import annotations

import pytest

from conftest import planned_jobs, run_snakemake, write_config
from merfishflow.spots.decoding import DecodingParams

pytestmark = pytest.mark.workflow


def test_experiment_yaml_reruns_on_values_not_bytes(demo_copy):
    workdir, _, experiment = demo_copy
    # As a real experiment (the simulated one is built from the config's simulation parameters).
    config = write_config(workdir / "real.yaml", "experiment", simulated=False)
    run_snakemake(workdir, config)  # leaving simulation mode reruns what depends on it, once
    yaml_path = experiment / "raw_data" / "experiment.yaml"
    text = yaml_path.read_text()
    yaml_path.write_text("# a note added by hand\n" + text + "# and one at the end\n")
    assert planned_jobs(workdir, config) == {}
    key, _, rest = text.partition("e_per_adu: ")
    value, _, tail = rest.partition("\n")
    yaml_path.write_text(f"{key}e_per_adu: {float(value) * 1.5}\n{tail}")
    jobs = planned_jobs(workdir, config)
    assert jobs["init"] == 1 and jobs["decode"] == 2 and jobs["ingest"] == 2


@pytest.mark.parametrize("decoding", [
    {"n_threads": 1},
    {"distance_threshold": DecodingParams().distance_threshold, "min_area": DecodingParams().min_area},
])
def test_result_neutral_decoding_keys_rerun_nothing(demo_copy, decoding):
    workdir, config, _ = demo_copy
    write_config(config, "experiment", decoding=decoding)
    assert planned_jobs(workdir, config) == {}


def test_changed_decoding_value_reruns_decode_and_after(demo_copy):
    workdir, config, _ = demo_copy
    write_config(config, "experiment", decoding={"distance_threshold": DecodingParams().distance_threshold - 0.05})
    jobs = planned_jobs(workdir, config)
    assert jobs == {"decode": 2, "filter_spots": 1, "evaluate": 1, "assign": 1, "qc_report": 1, "datastore": 1,
                    "all": 1}

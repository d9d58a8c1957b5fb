"""The raw_data contract and the config: every bad input names its file or key and what was expected."""

from __future__ import annotations


import pytest
import yaml

from conftest import TINY_SIMULATION
from merfishflow.workflow.config import validate_config
from merfishflow.errors import InputError
from merfishflow.io.metadata import load_experiment
from merfishflow.simulation import planned_experiment
from merfishflow.workflow.pipeline import Pipeline


def edit_yaml(root, change):
    path = root / "raw_data" / "experiment.yaml"
    doc = yaml.safe_load(path.read_text())
    change(doc)
    path.write_text(yaml.safe_dump(doc))


def edit_lines(path, change):
    lines = path.read_text().splitlines()
    path.write_text("\n".join(change(lines)) + "\n")


def test_valid_experiment_matches_the_simulation_plan(experiment):
    loaded = load_experiment(experiment)
    planned = planned_experiment(TINY_SIMULATION)
    assert loaded.tiles == planned.tiles and loaded.rounds == planned.rounds and loaded.bits == planned.bits
    assert loaded.stage_positions_um == planned.stage_positions_um
    assert loaded.exp_order == planned.exp_order and loaded.channels == planned.channels
    assert len(loaded.gene_ids) == TINY_SIMULATION["n_genes"] + TINY_SIMULATION["n_blanks"]
    assert loaded.round_of_bit("bit004") == "round0001"
    assert loaded.bits_of_round("round0002") == [("bit005", 1), ("bit006", 2)]


def bad_cases():
    """(id, how to break the experiment, the file named, words of the message)."""
    def yaml_key(change):
        return lambda root: edit_yaml(root, change)

    def csv_file(name, change):
        return lambda root: edit_lines(root / "raw_data" / name, change)

    def remove(relative):
        return lambda root: (root / "raw_data" / relative).unlink()

    def set_(keys, value):
        def change(doc):
            target = doc
            for key in keys[:-1]:
                target = target[key]
            target[keys[-1]] = value
        return change

    return [
        ("tiff-missing", remove("tile0001/round0002.tif"), "tile0001/round0002.tif", "raw TIFF not found"),
        ("yaml-missing", remove("experiment.yaml"), "experiment.yaml", "not found"),
        ("voxel-wrong-type", yaml_key(set_(["voxel_size_zyx_um"], "0.3")), "experiment.yaml",
         "voxel_size_zyx_um got '0.3'; expected 3 positive numbers"),
        ("gain-missing", yaml_key(lambda d: d["camera"].pop("e_per_adu")), "experiment.yaml", "camera.e_per_adu got None"),
        ("na-above-ri", yaml_key(set_(["microscope", "numerical_aperture"], 1.6)), "experiment.yaml",
         "microscope.numerical_aperture"),
        ("two-fiducials", yaml_key(lambda d: d["channels"][1].update(role="fiducial")), "experiment.yaml",
         "exactly one channel with role 'fiducial'"),
        ("bad-channel-name", yaml_key(lambda d: d["channels"][1].update(name="561 nm")), "experiment.yaml",
         "channels[1].name"),
        ("escaping-name", yaml_key(set_(["camera", "dark_frame"], "../../etc/passwd")), "experiment.yaml",
         "must be a relative name inside"),
        ("absolute-name", yaml_key(set_(["camera", "hot_pixel_map"], "/etc/passwd")), "experiment.yaml",
         "must be a relative name inside"),
        ("dark-frame-missing", remove("camera_dark_frame.tif"), "experiment.yaml", "does not exist"),
        ("codebook-too-few-bits", csv_file("codebook.csv", lambda ls: [",".join(l.split(",")[:-1]) for l in ls]),
         "codebook.csv", "has 7 bit columns"),
        ("codebook-duplicate-gene", csv_file("codebook.csv", lambda ls: ls + [ls[1]]), "codebook.csv",
         "duplicates line 2"),
        ("codebook-not-binary", csv_file("codebook.csv", lambda ls: [ls[0], ",2".join(ls[1].rsplit(",1", 1))] + ls[2:]),
         "codebook.csv", "expected 0 or 1"),
        ("exp-order-unknown-bit", csv_file("exp_order.csv", lambda ls: ls[:-1] + ["3,7,9"]), "exp_order.csv",
         "bit 9 is outside 1..8"),
        ("exp-order-bit-twice", csv_file("exp_order.csv", lambda ls: ls[:-1] + ["3,7,1"]), "exp_order.csv",
         "bit 1 is already imaged on line 2"),
        ("exp-order-round-skipped", csv_file("exp_order.csv", lambda ls: ls[:-1] + ["4,7,8"]), "exp_order.csv",
         "expected round 3"),
        ("exp-order-header", csv_file("exp_order.csv", lambda ls: ["round,readout_647,readout_561"] + ls[1:]),
         "exp_order.csv", "expected 'round,readout_561,readout_647'"),
        ("stage-tile-missing", csv_file("stage_positions.csv", lambda ls: [ls[0]] + ls[2:]), "stage_positions.csv",
         "tile 0 is missing"),
        ("stage-not-a-number", csv_file("stage_positions.csv", lambda ls: ls[:2] + ["1,0,abc,0"]),
         "stage_positions.csv", "'abc' is not a number"),
        ("stage-tile-twice", csv_file("stage_positions.csv", lambda ls: ls + [ls[1]]), "stage_positions.csv",
         "tile 0 is listed twice"),
    ]


@pytest.mark.parametrize("name, breaker, file_named, words", bad_cases(), ids=[c[0] for c in bad_cases()])
def test_bad_raw_data_is_named(experiment, name, breaker, file_named, words):
    breaker(experiment)
    with pytest.raises(InputError) as info:
        load_experiment(experiment)
    message = str(info.value)
    assert file_named in message and words in message, message


def test_bad_raw_data_stops_the_workflow_at_parse_time(experiment):
    edit_lines(experiment / "raw_data" / "codebook.csv", lambda ls: ls + [ls[1]])
    config = validate_config({"experiment_dir": str(experiment), "simulation": {"enabled": False}})
    with pytest.raises(InputError, match="codebook.csv: line"):
        Pipeline.from_config(config)


@pytest.mark.parametrize("config, key, words", [
    ({}, "(top level)", "'experiment_dir' is a required property"),
    ({"experiment_dir": 3}, "experiment_dir", "3 is not of type 'string'"),
    ({"experiment_dir": "x", "correction": {"hot_pixel_radius": 1.5}}, "correction.hot_pixel_radius",
     "is not of type 'integer'"),
    ({"experiment_dir": "x", "correction": {"hot_pixel_sigma": -1}}, "correction.hot_pixel_sigma",
     "less than or equal to the minimum"),
    ({"experiment_dir": "x", "ingest": {"slab_plane": 4}}, "ingest.slab_plane",
     "is not a known key of 'ingest' (did you mean 'ingest.slab_planes'?"),
])
def test_bad_config_is_named(config, key, words):
    with pytest.raises(InputError) as info:
        validate_config(config, source="my.yaml")
    message = str(info.value)
    assert message.startswith(f"my.yaml: key {key!r}") and words in message, message


def test_config_defaults_are_filled():
    config = validate_config({"experiment_dir": "x"})
    assert config["simulation"] == {"enabled": False, "params": {}}
    assert config["correction"] == {"hot_pixel_sigma": 10.0, "hot_pixel_radius": 1}
    assert config["ingest"] == {"slab_planes": 8}


def test_bad_simulation_parameter_is_named():
    config = validate_config({"experiment_dir": "x", "simulation": {"enabled": True, "params": {"n_round": 3}}})
    with pytest.raises(InputError, match="simulation parameter 'n_round' is unknown"):
        Pipeline.from_config(config)

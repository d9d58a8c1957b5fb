"""config/schema.yaml is the one home of every config key's type, range and default."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from conftest import run_snakemake, write_config
from merfishflow.errors import InputError
from merfishflow.workflow.config import (PARAMS_OF_SECTION, RULE_KEYS, _schema, params_class, segmentation_options,
                                         validate_config)


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize("section", list(PARAMS_OF_SECTION))
def test_every_dataclass_field_is_a_schema_key_with_the_same_default(section):
    keys = _schema()["properties"][section]["properties"]
    fields = {f.name: f for f in dataclasses.fields(params_class(section))}
    assert sorted(set(keys) - set(RULE_KEYS.get(section, ()))) == sorted(fields)
    for name, f in fields.items():
        if "default" in keys[name]:
            assert _plain(f.default) == keys[name]["default"], (section, name)


def test_every_section_refuses_unknown_keys_and_every_default_is_valid():
    schema = _schema()
    for name, section in schema["properties"].items():
        if section.get("type") == "object" and name != "simulation":
            assert section.get("additionalProperties") is False, name
    # The defaults alone form a valid config (jsonschema does not check "default" values itself).
    filled = validate_config({"experiment_dir": "x"})
    assert validate_config(filled) == filled


def test_the_defaults_of_the_functions_are_the_schemas():
    from merfishflow.cells.assignment import assign_spots, merge_cells
    from merfishflow.stages.cells import run_assign

    config = validate_config({"experiment_dir": "x"})
    assert config["assignment"]["expand_um"] == 0.5
    for function in (assign_spots, run_assign):
        assert inspect.signature(function).parameters["expand_um"].default == 0.5
    for function in (merge_cells, run_assign):
        assert inspect.signature(function).parameters["min_shared_fraction"].default == \
            config["assignment"]["min_shared_fraction"]
    from merfishflow.image.stitching import DEFAULT_CONTEXT_UM
    from merfishflow.io.paths import SEGMENTATION_IMAGES
    assert segmentation_options({})[1:] == (DEFAULT_CONTEXT_UM, SEGMENTATION_IMAGES[0])


@pytest.mark.parametrize("config, words", [
    ({"decoding": {"distance_treshold": 0.5}}, "key 'decoding.distance_treshold' is not a known key of 'decoding' "
                                               "(did you mean 'decoding.distance_threshold'?"),
    ({"decoding": {"distance_threshold": "0.5"}}, "key 'decoding.distance_threshold': '0.5' is not of type 'number'"),
    ({"decoding": {"magnitude_threshold": float("nan")}}, "key 'decoding.magnitude_threshold': nan is not a finite"),
    ({"segmentation": {"threshold_fraction": 1.0}}, "key 'segmentation.threshold_fraction': 1.0 is greater than or "
                                                    "equal to the maximum of 1"),
    ({"assignment": {"expand_um": -1}}, "key 'assignment.expand_um': -1 is less than the minimum of 0"),
    ({"decod": {}}, "key 'decod' is not a known key (did you mean 'decoding'?"),
])
def test_a_bad_key_is_one_line_naming_it(config, words):
    with pytest.raises(InputError) as err:
        validate_config({"experiment_dir": "x", **config})
    assert words in str(err.value) and "\n" not in str(err.value)


def _refused_before_any_job(tmp_path, config_text, *args):
    config = tmp_path / "config.yaml"
    config.write_text(config_text)
    result = run_snakemake(tmp_path, config, *args, check=False)
    assert result.returncode != 0
    assert not (tmp_path / "experiment").exists()
    return result.stdout + result.stderr


@pytest.mark.workflow
def test_a_config_key_given_twice_is_refused(tmp_path):
    text = write_config(tmp_path / "base.yaml", "experiment").read_text()
    text += "decoding:\n  min_area: 4\ndecoding:\n  min_area: 6\n"
    out = _refused_before_any_job(tmp_path, text, "-n")
    assert "config.yaml: line" in out and "key 'decoding' is given twice (first on line" in out, out[-3000:]


@pytest.mark.workflow
@pytest.mark.parametrize("section", ["decoding", "segmentation", "assignment"])
def test_a_typo_is_refused_under_dry_run_for_any_target(tmp_path, section):
    """Not only when the first decode job is scheduled: also a narrower target, also under -n."""
    text = write_config(tmp_path / "base.yaml", "experiment").read_text() + f"{section}:\n  typo_key: 1\n"
    target = "experiment/qi2labdatastore/calibrations.zarr/.zattrs"
    out = _refused_before_any_job(tmp_path, text, "-n", target)
    assert f"config: key '{section}.typo_key' is not a known key of '{section}'" in out, out[-3000:]


@pytest.mark.workflow
def test_a_check_across_keys_comes_before_any_job(tmp_path):
    text = write_config(tmp_path / "base.yaml", "experiment").read_text() + "decoding:\n  min_area: 50\n  max_area: 10\n"
    out = _refused_before_any_job(tmp_path, text, "-n")
    assert "config: decoding parameter min_area=50: expected 1 <= min_area <= max_area" in out, out[-3000:]


def test_input_functions_parse_the_schema_once(monkeypatch):
    """segmentation_options runs for every tile's jobs while Snakemake builds the DAG; parsing
    config/schema.yaml each time dominated a large dry run (benchmarks/RESULTS.md)."""
    import yaml

    from merfishflow.workflow import config as config_module

    config_module._parsed_schema.cache_clear()
    config_module._segmentation_rule_defaults.cache_clear()
    calls = []
    real_load = yaml.safe_load
    monkeypatch.setattr(yaml, "safe_load", lambda text: calls.append(1) or real_load(text))
    for _ in range(50):
        fields, context_um, image = config_module.segmentation_options({"context_um": 2.0, "method": "watershed"})
    assert fields == {"method": "watershed"} and context_um == 2.0 and image == "corrected"
    assert len(calls) == 1
    # Callers get their own copy of the schema.
    config_module._schema()["properties"].clear()
    assert "segmentation" in config_module._schema()["properties"]

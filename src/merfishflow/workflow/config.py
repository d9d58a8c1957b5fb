"""The workflow configuration: JSON Schema validation with defaults (config/schema.yaml).

config/schema.yaml is the one home of every key's type, range and default. Adding a key is one entry
there (and a line in config/README.md); a stage that reads a section as a dataclass lists it in
:data:`PARAMS_OF_SECTION`, and tests/test_config_schema.py fails when a dataclass field's default
differs from the schema's, or a field is missing from it.
"""

from __future__ import annotations

import copy
import difflib
import functools
import importlib
import math
from pathlib import Path

from ..errors import InputError

# Config sections read as parameter dataclasses: section -> "module:class". Every field of the class is
# a key of the section in config/schema.yaml with the same default; the workflow builds each one when the
# Snakefile is parsed (:func:`check_stage_params`), so checks across keys (min_area <= max_area) come
# before any job too. Keys the rules read themselves (segmentation.context_um, .image) are listed in
# :data:`RULE_KEYS`.
PARAMS_OF_SECTION = {
    "correction": "merfishflow.stages.ingest:CorrectionParams",
    "deconvolution": "merfishflow.stages.deconvolve:DeconvolutionParams",
    "registration": "merfishflow.stages.register:RegistrationParams",
    "decoding": "merfishflow.spots.decoding:DecodingParams",
    "filtering": "merfishflow.spots.filtering:FilterParams",
    "segmentation": "merfishflow.cells.segmentation:SegmentationParams",
    "assignment": "merfishflow.cells.assignment:AssignmentParams",
}
RULE_KEYS = {"segmentation": ("context_um", "image")}

SCHEMA_PATH = Path(__file__).resolve().parents[3] / "config" / "schema.yaml"


def _schema(schema_path=None) -> dict:
    """The parsed schema (a copy: callers may change it)."""
    return copy.deepcopy(_parsed_schema(str(Path(schema_path) if schema_path else SCHEMA_PATH)))


@functools.lru_cache(maxsize=4)
def _parsed_schema(path: str) -> dict:
    # Parsed once per process: input functions call segmentation_options for every tile's job, and
    # parsing config/schema.yaml each time dominated a large dry run (benchmarks/RESULTS.md).
    import yaml

    return yaml.safe_load(Path(path).read_text())


@functools.lru_cache(maxsize=1)
def _segmentation_rule_defaults() -> tuple:
    defaults = _parsed_schema(str(SCHEMA_PATH))["properties"]["segmentation"]["properties"]
    return defaults["context_um"]["default"], defaults["image"]["default"]


def _validator_with_defaults(schema):
    from jsonschema import Draft202012Validator, validators

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from Draft202012Validator.VALIDATORS["properties"](validator, properties, instance, schema)

    cls = validators.extend(Draft202012Validator, {"properties": set_defaults})
    return cls(schema)


def _key_path(path) -> str:
    return ".".join(str(p) for p in path)


def _error_line(err, source) -> str:
    """One line naming the key, what it got and what was expected."""
    where = list(err.absolute_path)
    if err.validator == "additionalProperties":
        known = sorted(err.schema.get("properties", {}))
        unknown = sorted(set(err.instance) - set(known))
        section = _key_path(where)
        key = _key_path(where + [unknown[0]]) if unknown else section
        close = difflib.get_close_matches(str(unknown[0]), known, n=1) if unknown else []
        hint = f"did you mean {_key_path(where + close)!r}?" if close else f"known: {', '.join(known)}"
        inside = f"of {section!r} " if section else ""
        return f"{source}: key {key!r} is not a known key {inside}({hint}; see config/README.md)"
    key = _key_path(where) or "(top level)"
    return f"{source}: key {key!r}: {err.message} (see config/README.md)"


def _non_finite(value, path=()):
    """The first key whose value is NaN or infinite (YAML .nan/.inf pass every JSON Schema range check)."""
    if isinstance(value, float) and not math.isfinite(value):
        return path
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for k, v in items:
        found = _non_finite(v, path + (k,))
        if found is not None:
            return found
    return None


def validate_config(config: dict, *, source="config", schema_path=None) -> dict:
    """A validated copy of ``config`` with every default filled in.

    Parameters
    ----------
    config : dict
        As loaded from YAML (``snakemake --configfile`` / ``--config``).
    source : str
        Where it came from, for error messages.

    Raises
    ------
    InputError
        Naming the key, the value and what the schema expects.
    """
    if not isinstance(config, dict):
        raise InputError(f"{source}: expected a mapping of keys, got {type(config).__name__}")
    checked = copy.deepcopy(config)
    bad = _non_finite(checked)
    if bad is not None:
        raise InputError(f"{source}: key {_key_path(bad)!r}: {_get(checked, bad)!r} is not a finite number "
                         "(see config/README.md)")
    validator = _validator_with_defaults(_schema(schema_path))
    errors = sorted(validator.iter_errors(checked), key=lambda e: list(e.absolute_path))
    if errors:
        raise InputError(_error_line(errors[0], source))
    return checked


def _get(config, path):
    for p in path:
        config = config[p]
    return config


def check_config_files(paths) -> None:
    """Re-read the config files Snakemake merged, refusing a key given twice in one of them.

    Snakemake parses ``--configfile`` itself with a loader that keeps the last of two equal keys.
    """
    from ..io.fileio import read_yaml

    for path in paths:
        read_yaml(path, what="config file")


def params_class(section: str):
    """The dataclass a config section is read into (:data:`PARAMS_OF_SECTION`)."""
    module, name = PARAMS_OF_SECTION[section].split(":")
    return getattr(importlib.import_module(module), name)


def stage_params(config: dict, section: str):
    """The section of a validated config as its parameter dataclass (keys of :data:`RULE_KEYS` left out)."""
    fields = {k: v for k, v in config[section].items() if k not in RULE_KEYS.get(section, ())}
    cls = params_class(section)
    if hasattr(cls, "from_dict"):
        return cls.from_dict(fields)
    return cls(**fields)


def check_stage_params(config: dict) -> None:
    """Build every section's parameter dataclass, so that a check across keys fails before any job."""
    for section in PARAMS_OF_SECTION:
        try:
            stage_params(config, section)
        except InputError as err:
            raise InputError(f"config: {err}") from None


def load_config(path) -> dict:
    """Read a YAML config file and validate it."""
    from ..io.fileio import read_yaml

    path = Path(path)
    return validate_config(read_yaml(path, what="config file"), source=str(path))


def segmentation_options(section: dict):
    """Split the config's ``segmentation`` section into what the segment rule reads itself and the rest.

    Returns
    -------
    fields : dict
        The :class:`~merfishflow.cells.segmentation.SegmentationParams` fields given.
    context_um : float
        ``context_um``, the neighbours' band (default: config/schema.yaml).
    image : str
        ``image``, which round-0 fiducial is segmented (default: config/schema.yaml).
    """
    fields = dict(section)
    default_context_um, default_image = _segmentation_rule_defaults()
    context_um = fields.pop("context_um", default_context_um)
    image = fields.pop("image", default_image)
    return fields, context_um, image

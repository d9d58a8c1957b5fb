"""The workflow configuration: JSON Schema validation with defaults (config/schema.yaml)."""

from __future__ import annotations

import copy
from pathlib import Path

from ..errors import InputError

SCHEMA_PATH = Path(__file__).resolve().parents[3] / "config" / "schema.yaml"


def _schema(schema_path=None) -> dict:
    import yaml

    path = Path(schema_path) if schema_path else SCHEMA_PATH
    return yaml.safe_load(path.read_text())


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
    validator = _validator_with_defaults(_schema(schema_path))
    errors = sorted(validator.iter_errors(checked), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        key = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        raise InputError(f"{source}: key {key!r}: {err.message} (see config/README.md)")
    return checked


def load_config(path) -> dict:
    """Read a YAML config file and validate it."""
    import yaml

    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: config file not found") from None
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML ({err})") from None
    return validate_config(doc, source=str(path))


def segmentation_options(section: dict):
    """Split the config's ``segmentation`` section into what the segment rule reads itself and the rest.

    Returns
    -------
    fields : dict
        The :class:`~merfishflow.cells.segmentation.SegmentationParams` fields given.
    context_um : float
        ``context_um``, the neighbours' band (default ``stitching.DEFAULT_CONTEXT_UM``).
    image : str
        ``image``, which round-0 fiducial is segmented (default the first of ``paths.SEGMENTATION_IMAGES``).
    """
    from ..io.paths import SEGMENTATION_IMAGES
    from ..image.stitching import DEFAULT_CONTEXT_UM

    fields = dict(section)
    context_um = fields.pop("context_um", DEFAULT_CONTEXT_UM)
    image = fields.pop("image", SEGMENTATION_IMAGES[0])
    return fields, context_um, image

"""A measured PSF in raw_data: used instead of the model when valid, refused before any job when not."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tifffile
import yaml

from conftest import TINY_SIMULATION
from merfishflow.errors import InputError
from merfishflow.io import datastore
from merfishflow.io.metadata import load_experiment
from merfishflow.simulation import simulate_experiment
from merfishflow.stages.init import run_init
from merfishflow.workflow.config import validate_config
from merfishflow.workflow.pipeline import Pipeline


def gaussian_psf(shape=(7, 15, 15), sigma=(1.0, 1.5, 1.5), total=5.0):
    axes = [np.arange(n) - (n - 1) / 2 for n in shape]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    psf = np.exp(-(zz / sigma[0]) ** 2 / 2 - (yy / sigma[1]) ** 2 / 2 - (xx / sigma[2]) ** 2 / 2)
    return (psf * total / psf.sum()).astype(np.float32)


def name_psf(root, array, channel=1, **entry):
    """Write ``array`` (if not None) as raw_data/psf.tif and name it for one channel in experiment.yaml."""
    if array is not None:
        tifffile.imwrite(root / "raw_data" / "psf.tif", array)
    path = root / "raw_data" / "experiment.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["channels"][channel].update({"psf": "psf.tif", **entry})
    path.write_text(yaml.safe_dump(doc))


def test_measured_psf_replaces_the_model_in_psf_data(experiment, tmp_path):
    model_root = tmp_path / "model"
    shutil.copytree(experiment, model_root)
    model = datastore.read_array(run_init(model_root, progress=lambda s: None), "psf_data")
    measured = gaussian_psf()
    name_psf(experiment, measured, channel=1, psf_voxel_size_zyx_um=list(TINY_SIMULATION.get(
        "voxel_size_zyx_um", [0.31, 0.108, 0.108])))
    assert load_experiment(experiment).channels[1].psf == "psf.tif"
    group = run_init(experiment, progress=lambda s: None)
    psf_data = datastore.read_array(group, "psf_data")
    assert psf_data.shape[1:] == tuple(np.maximum(model.shape[1:], measured.shape))
    start = [(n - m) // 2 for n, m in zip(psf_data.shape[1:], measured.shape)]
    inner = tuple(slice(s, s + m) for s, m in zip(start, measured.shape))
    np.testing.assert_allclose(psf_data[1][inner], measured / measured.sum(), rtol=1e-6, atol=1e-9)
    assert psf_data[1].sum() == pytest.approx(1.0, abs=1e-5) and psf_data[1][inner].sum() == pytest.approx(1.0)
    # The other channels keep the model.
    for c in (0, 2):
        np.testing.assert_array_equal(psf_data[c], model[c])
    attrs = datastore.read_marker(group)
    assert attrs["psf_source"] == {"polyDT": "model", "readout_561": "psf.tif", "readout_647": "model"}
    assert "raw_data/psf.tif" in attrs["inputs_sha256"]


def bad_psfs():
    """(id, PSF array or None to write none, extra channel entry, words of the message)."""
    good = gaussian_psf()
    negative = good.copy()
    negative[0, 0, 0] = -0.5
    nan = good.copy()
    nan[3, 7, 7] = np.nan
    off_centre = np.roll(good, 3, axis=2)
    return [
        ("two-d", good[3], {}, "PSF shape (15, 15); expected a 3D (z, y, x) stack with odd sizes"),
        ("even-size", good[:, :14, :14], {}, "PSF shape (7, 14, 14); expected a 3D (z, y, x) stack with odd sizes"),
        ("negative", negative, {}, "must be finite and non-negative"),
        ("nan", nan, {}, "must be finite and non-negative"),
        ("all-zero", np.zeros_like(good), {}, "with a positive sum"),
        ("off-centre", off_centre, {}, "from the central voxel; expected within 1 voxel"),
        ("missing", None, {}, "psf.tif: not found"),
        ("voxel-mismatch", good, {"psf_voxel_size_zyx_um": [0.2, 0.1, 0.1]}, "channels[1].psf_voxel_size_zyx_um"),
        ("escaping", None, {"psf": "../psf.tif"}, "must be a relative name inside"),
    ]


@pytest.mark.parametrize("name, psf, entry, words", bad_psfs(), ids=[c[0] for c in bad_psfs()])
def test_bad_measured_psf_is_refused_at_parse_time(experiment, name, psf, entry, words):
    name_psf(experiment, psf, **entry)
    config = validate_config({"experiment_dir": str(experiment), "simulation": {"enabled": False}})
    with pytest.raises(InputError) as info:
        Pipeline.from_config(config)
    message = str(info.value)
    assert words in message and "\n" not in message, message
    assert "psf" in message


def test_unreadable_psf_names_the_file(experiment):
    (experiment / "raw_data" / "psf.tif").write_text("not a tiff")
    name_psf(experiment, None)
    with pytest.raises(InputError, match=r"psf\.tif: cannot be read as a TIFF .*channels\[1\]\.psf names it"):
        load_experiment(experiment)


def test_simulator_writes_its_gaussian_psf_as_the_measured_psf(tmp_path):
    from merfishflow.image.psf import gaussian_psf

    params = dict(TINY_SIMULATION, n_tiles_yx=[1, 1], psf_kind="gaussian")
    simulate_experiment(tmp_path, params)
    experiment = load_experiment(tmp_path)
    expected = gaussian_psf(experiment.voxel_size_zyx_um, (0.25, 0.09, 0.09))
    for channel in experiment.channels:
        assert channel.psf == f"psf_{channel.name}.tif"
        np.testing.assert_array_equal(tifffile.imread(tmp_path / "raw_data" / channel.psf), expected)
    psf_data = datastore.read_array(run_init(tmp_path, progress=lambda s: None), "psf_data")
    np.testing.assert_allclose(psf_data, np.stack([expected] * len(experiment.channels)), rtol=1e-6)

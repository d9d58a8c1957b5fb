"""Global registration against the simulator's true stage positions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from merfishflow.errors import InputError
from merfishflow.io.metadata import load_experiment
from merfishflow.simulation import simulate_experiment
from merfishflow.image.stitching import overlap_slices, register_tiles

# Stage errors of ~5 px (0.5 µm at 0.108 µm/px) on a 2 x 2 grid with 20 % overlap.
PARAMS = dict(seed=8, n_tiles_yx=(2, 2), n_rounds=1, n_readout_channels=2, image_shape_zyx=(12, 96, 96),
              n_genes=1, n_blanks=0, codeword_weight=1, min_hamming_distance=1, stage_error_sd_um=0.5)


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid")
    simulate_experiment(root, PARAMS)
    experiment = load_experiment(root)
    dark = tifffile.imread(root / "raw_data" / "camera_dark_frame.tif")
    images = [tifffile.imread(root / "raw_data" / f"tile{t:04d}" / "round0000.tif")[0] - dark for t in range(4)]
    truth = json.loads((root / "ground_truth" / "transforms.json").read_text())
    return experiment, images, truth


def test_tile_positions_within_half_a_pixel(grid):
    experiment, images, truth = grid
    voxel = np.array(experiment.voxel_size_zyx_um)
    true_um = np.array([t["true_stage_zyx_um"] for t in truth["tiles"]])
    stage_error_px = np.array([t["stage_error_zyx_px"] for t in truth["tiles"]])
    assert np.abs(stage_error_px[:, 1:]).max() > 3, "the test needs stage errors of several pixels"
    result = register_tiles(images, np.array(experiment.stage_positions_um), voxel)
    # Only relative positions are observable: compare with the mean removed.
    found = (result.origin_zyx_um - result.origin_zyx_um.mean(0)) / voxel
    want = (true_um - true_um.mean(0)) / voxel
    error = np.abs(found - want)
    assert error.max() <= 0.5, error
    nominal_error = np.abs((np.array(experiment.stage_positions_um) - np.mean(experiment.stage_positions_um, 0)) / voxel
                           - want)
    assert nominal_error.max() > 3 * error.max()
    assert len(result.pairs) == 4 and all(p.used for p in result.pairs)  # edge neighbours only
    affine = result.affine_zyx_um(2)
    assert np.allclose(affine[:3, :3], np.eye(3)) and np.allclose(affine[:3, 3], result.origin_zyx_um[2])


def test_overlap_slices():
    a, b = overlap_slices([0, 0, 0], [0, 0, 8.0], (4, 10, 10), (1, 1, 1))
    assert a == (slice(0, 4), slice(0, 10), slice(8, 10)) and b == (slice(0, 4), slice(0, 10), slice(0, 2))
    assert overlap_slices([0, 0, 0], [0, 0, 11.0], (4, 10, 10), (1, 1, 1)) is None


def test_tile_without_neighbour_is_named(grid):
    experiment, images, _ = grid
    nominal = np.array(experiment.stage_positions_um)
    nominal[3, 2] += 100.0  # tile 3 moved far away from the others
    nominal[3, 1] += 100.0
    with pytest.raises(InputError, match="tile0003: no overlapping neighbour"):
        register_tiles(images, nominal, experiment.voxel_size_zyx_um)


def test_blank_fiducial_is_named(grid):
    experiment, images, _ = grid
    blank = list(images)
    blank[1] = np.full_like(images[1], 7)
    with pytest.raises(InputError, match="tile0001: the round-0 fiducial image is blank"):
        register_tiles(blank, np.array(experiment.stage_positions_um), experiment.voxel_size_zyx_um)


def test_single_tile_keeps_its_position(grid):
    experiment, images, _ = grid
    result = register_tiles(images[:1], np.array(experiment.stage_positions_um[:1]), experiment.voxel_size_zyx_um)
    assert np.allclose(result.origin_zyx_um, experiment.stage_positions_um[:1]) and result.pairs == []

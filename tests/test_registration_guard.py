"""Registration never makes an image worse: the optical-flow field is kept only where it helps (issue 17).

Both fiducial kinds of the simulator, each against its truth (transforms.json, deformation TIFFs).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from merfishflow.image.registration import register_round
from merfishflow.simulation import simulate_experiment

SHAPE = (12, 128, 128)


def simulate(root, fiducial_kind, deformation_amplitude_px):
    simulate_experiment(root, dict(seed=4, n_tiles_yx=(1, 1), n_rounds=3, n_readout_channels=2, image_shape_zyx=SHAPE,
                                   n_genes=3, n_blanks=0, fiducial_kind=fiducial_kind,
                                   deformation_amplitude_px=deformation_amplitude_px))
    dark = tifffile.imread(root / "raw_data" / "camera_dark_frame.tif").astype(np.float32)
    fiducials = [tifffile.imread(root / "raw_data" / "tile0000" / f"round{r:04d}.tif")[0].astype(np.float32) - dark
                 for r in range(3)]
    return fiducials, json.loads((root / "ground_truth" / "transforms.json").read_text())


def test_sparse_beads_keep_the_rigid_result(tmp_path):
    fiducials, transforms = simulate(tmp_path, "beads", 0.0)
    for r in (1, 2):
        result = register_round(fiducials[0], fiducials[r])
        truth = np.array(transforms["rounds"][r]["shift_zyx_px"])
        np.testing.assert_allclose(result.shift_zyx_px, truth, atol=0.15)
        # Between beads the flow follows noise: it lowers the correlation, so it is rejected.
        assert result.ncc_after < result.ncc_rigid
        assert result.flow_accepted is False and result.field is None and result.rejected_field is not None
        unguarded = register_round(fiducials[0], fiducials[r], min_flow_gain=None)
        assert unguarded.flow_accepted is None and unguarded.field is not None


def test_deformed_polydt_keeps_the_flow_and_it_is_closer_to_truth(tmp_path):
    fiducials, transforms = simulate(tmp_path, "polydt", 0.7)
    inner = (slice(2, -2), slice(8, -8), slice(8, -8))
    for r in (1, 2):
        result = register_round(fiducials[0], fiducials[r])
        assert result.flow_accepted is True and result.field is not None
        assert result.ncc_after > result.ncc_rigid + 0.001
        deformation = tifffile.imread(tmp_path / "ground_truth" / f"deformation_tile0000_round{r:04d}.tif")
        truth = np.asarray(transforms["rounds"][r]["shift_zyx_px"]).reshape(3, 1, 1, 1) + deformation
        with_flow = result.displacement(SHAPE)
        rigid_only = np.broadcast_to(result.shift_zyx_px.reshape(3, 1, 1, 1), with_flow.shape)
        error_flow = np.sqrt(np.mean((with_flow - truth)[(slice(None),) + inner] ** 2))
        error_rigid = np.sqrt(np.mean((rigid_only - truth)[(slice(None),) + inner] ** 2))
        assert error_flow < 0.8 * error_rigid, (error_flow, error_rigid)


@pytest.mark.parametrize("gain", [-1.0, 1.0])
def test_the_gain_threshold_decides(tmp_path, gain):
    fiducials, _ = simulate(tmp_path, "polydt", 0.7)
    result = register_round(fiducials[0], fiducials[1], min_flow_gain=gain)
    assert result.flow_accepted is (gain < 0)

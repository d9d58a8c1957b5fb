"""Deconvolution and registration as pipeline stages: what they write and how they fail."""

from __future__ import annotations

import json

import numpy as np
import pytest

from merfishflow.io import datastore
from merfishflow.image.correction import to_uint16
from merfishflow.errors import IncompleteDataError, InputError
from merfishflow.io.metadata import load_experiment
from merfishflow.io.paths import DECON_DATA, FLOW_FIELD, REGISTERED_DATA, ExperimentPaths
from merfishflow.image.registration import apply_transform
from merfishflow.stages.deconvolve import run_deconvolve
from merfishflow.stages.register import FLOW_DOWNSAMPLE, run_register_local
from merfishflow.workflow.status import stage_states

pytestmark = pytest.mark.workflow


def test_readouts_take_their_own_rounds_transform(demo_run):
    _, _, experiment_dir = demo_run
    paths = ExperimentPaths(experiment_dir)
    experiment = load_experiment(experiment_dir)
    tile = "tile0001"
    shifts = {}
    for round_ in experiment.rounds:
        attrs = datastore.read_marker(paths.fiducial_array(tile, round_, REGISTERED_DATA))
        shifts[round_] = attrs["shift_zyx_px"]
    assert len({tuple(s) for s in shifts.values()}) == len(shifts), "every round should have its own shift"
    for round_ in experiment.rounds[1:]:
        field = datastore.read_marked_array(paths.fiducial_array(tile, round_, FLOW_FIELD))
        for bit, _ in experiment.bits_of_round(round_):
            registered = paths.readout_array(tile, bit, REGISTERED_DATA)
            assert datastore.read_marker(registered)["shift_zyx_px"] == shifts[round_]
            decon = datastore.read_marked_array(paths.readout_array(tile, bit, DECON_DATA)).astype(np.float32)
            expected, _ = to_uint16(apply_transform(decon, shifts[round_], field, downsample=FLOW_DOWNSAMPLE))
            assert np.array_equal(datastore.read_marked_array(registered), expected)


def test_flow_decision_and_both_scores_are_recorded(demo_run):
    _, _, experiment_dir = demo_run
    paths = ExperimentPaths(experiment_dir)
    experiment = load_experiment(experiment_dir)
    for tile in experiment.tiles:
        for round_ in experiment.rounds[1:]:
            fiducial = datastore.read_marker(paths.fiducial_array(tile, round_, REGISTERED_DATA))
            field_path = paths.fiducial_array(tile, round_, FLOW_FIELD)
            field_attrs = datastore.read_marker(field_path)
            gain = fiducial["parameters"]["min_flow_gain"]
            assert fiducial["flow_decision"] in ("accepted", "rejected")
            assert (fiducial["flow_decision"] == "accepted") == (fiducial["ncc_flow"] > fiducial["ncc_rigid"] + gain)
            for key in ("ncc_rigid", "ncc_flow", "flow_decision", "shift_zyx_px"):
                assert field_attrs[key] == fiducial[key]
            field = datastore.read_marked_array(field_path)
            if fiducial["flow_decision"] == "rejected":
                assert not field.any() and field_attrs["candidate_rms_px"] is not None
            else:
                assert field.any() and field_attrs["candidate_rms_px"] is None
            for bit, _ in experiment.bits_of_round(round_):
                readout = datastore.read_marker(paths.readout_array(tile, bit, REGISTERED_DATA))
                assert readout["flow_decision"] == fiducial["flow_decision"]


def test_round_zero_is_the_reference_and_copied(demo_run):
    _, _, experiment_dir = demo_run
    paths = ExperimentPaths(experiment_dir)
    for array in (paths.fiducial_group("tile0000", "round0000"), paths.readout_group("tile0000", "bit001")):
        decon = datastore.read_marked_array(array / DECON_DATA)
        assert np.array_equal(datastore.read_marked_array(array / REGISTERED_DATA), decon)
    assert not (paths.fiducial_group("tile0000", "round0000") / FLOW_FIELD).exists()


def test_deconvolved_data_is_recorded(demo_run):
    _, _, experiment_dir = demo_run
    paths = ExperimentPaths(experiment_dir)
    attrs = datastore.read_marker(paths.readout_array("tile0000", "bit003", DECON_DATA))
    assert attrs["stage"] == "deconvolve" and attrs["iterations_max"] == attrs["parameters"]["iterations"]
    assert attrs["dtype"] == "<u2" and attrs["backend"] == "numpy"
    corrected = datastore.read_array(paths.readout_group("tile0000", "bit003"), "corrected_data").astype(float)
    decon = datastore.read_marked_array(paths.readout_array("tile0000", "bit003", DECON_DATA)).astype(float)
    # The default Wiener-Butterworth back projector makes the image spikier. It does not keep the flux as
    # matched Richardson-Lucy does (tests/test_deconvolution.py): the sharpened background noise, clipped
    # at 0, adds to it (+23 % on this demo tile, docs/datastore.md). It must never lose flux.
    assert attrs["parameters"]["back_projector"] == "wiener_butterworth"
    assert 0.98 * corrected.sum() <= decon.sum() <= 1.3 * corrected.sum()
    assert decon.max() > 1.5 * corrected.max()


def test_deconvolved_data_records_the_z_boundary(demo_run):
    # The demo's model PSF is even in z, so the default 'auto' ran the unpadded mirror boundary.
    _, _, experiment_dir = demo_run
    attrs = datastore.read_marker(ExperimentPaths(experiment_dir).readout_array("tile0000", "bit003", DECON_DATA))
    assert attrs["parameters"]["z_boundary"] == "auto" and attrs["z_boundary"] == "mirror"


def test_fiducial_can_skip_deconvolution(demo_copy):
    from merfishflow.stages.deconvolve import DeconvolutionParams

    _, _, experiment_dir = demo_copy
    paths = ExperimentPaths(experiment_dir)
    from merfishflow.io.metadata import round_targets

    targets = round_targets(paths, load_experiment(experiment_dir), "tile0000", "round0001")
    readout = targets[1][0] / DECON_DATA     # the first readout bit imaged in round0001
    before = datastore.read_marked_array(readout)
    run_deconvolve(experiment_dir, "tile0000", "round0001", DeconvolutionParams(fiducial="skip"),
                   progress=lambda m: None)
    fiducial = paths.fiducial_array("tile0000", "round0001", DECON_DATA)
    corrected = datastore.read_array(paths.fiducial_group("tile0000", "round0001"), "corrected_data")
    assert np.array_equal(datastore.read_marked_array(fiducial), corrected)
    attrs = datastore.read_marker(fiducial)
    assert attrs["iterations_max"] == 0 and "not deconvolved" in attrs["units"]
    # The readouts of the round are still deconvolved, as before.
    assert np.array_equal(datastore.read_marked_array(readout), before)
    assert datastore.read_marker(readout)["iterations_max"] > 0


def test_global_placement_of_every_tile(demo_run):
    _, _, experiment_dir = demo_run
    paths = ExperimentPaths(experiment_dir)
    experiment = load_experiment(experiment_dir)
    truth = json.loads((experiment_dir / "ground_truth" / "transforms.json").read_text())
    voxel = np.array(experiment.voxel_size_zyx_um)
    origins = []
    for t, tile in enumerate(experiment.tiles):
        attrs = datastore.read_marker(paths.global_registration(tile))
        affine = np.array(attrs["affine_zyx_um"])
        assert affine.shape == (4, 4) and np.allclose(affine[:3, 3], attrs["origin_zyx_um"])
        assert attrs["spacing_zyx_um"] == list(experiment.voxel_size_zyx_um)
        origins.append(attrs["origin_zyx_um"])
    true = np.array([t["true_stage_zyx_um"] for t in truth["tiles"]])
    found = np.diff(np.array(origins), axis=0) / voxel
    want = np.diff(true, axis=0) / voxel
    nominal = np.diff(np.array(experiment.stage_positions_um), axis=0) / voxel
    # The tiny test tiles (6 x 48 x 48, a 10-pixel overlap) are much harder than real ones
    # (test_stitching.py holds the 0.5 px bound on 96 px tiles); still far better than the stage.
    assert np.abs(found - want).max() < 1.0 < np.abs(nominal - want).max()


def test_stage_is_complete_only_when_every_tile_is(demo_copy):
    _, _, experiment_dir = demo_copy
    paths = ExperimentPaths(experiment_dir)
    (paths.readout_array("tile0001", "bit004", DECON_DATA) / ".zattrs").unlink()
    states = stage_states(load_experiment(experiment_dir), experiment_dir)
    assert not states["deconvolve"]["complete"] and states["deconvolve"]["incomplete"] == ["tile0001"]
    assert states["register_local"]["complete"]


def test_psf_voxel_size_mismatch_is_named(demo_copy):
    _, _, experiment_dir = demo_copy
    group = ExperimentPaths(experiment_dir).fiducial_group("tile0000", "round0001")
    attrs = datastore.read_marker(group)
    attrs["voxel_size_zyx_um"] = [0.5, 0.108, 0.108]
    datastore.write_marker(group, attrs)
    with pytest.raises(InputError, match=r"0\.5.*0\.31|0\.31.*0\.5"):
        run_deconvolve(experiment_dir, "tile0000", "round0001", progress=lambda m: None)


def test_missing_round_is_named(demo_copy):
    _, _, experiment_dir = demo_copy
    decon = ExperimentPaths(experiment_dir).fiducial_array("tile0000", "round0002", DECON_DATA)
    (decon / ".zattrs").unlink()
    with pytest.raises(IncompleteDataError, match="round0002.zarr/decon_data/.zattrs: missing"):
        run_register_local(experiment_dir, "tile0000", progress=lambda m: None)

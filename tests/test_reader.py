"""merfishflow.Datastore on a finished tiny run: every property and every image kind, checked against the
raw metadata (read by the raw_data validator) and against zarr reading the arrays on its own."""

from __future__ import annotations

import numpy as np
import pytest

import merfishflow
from merfishflow.errors import IncompleteDataError, InputError
from merfishflow.io.metadata import load_experiment
from merfishflow.io.naming import tile_name

zarr = pytest.importorskip("zarr")


@pytest.fixture(scope="module")
def store(demo_run):
    _, _, experiment_dir = demo_run
    return merfishflow.Datastore(experiment_dir), load_experiment(experiment_dir)


def test_properties_match_the_raw_metadata(store):
    ds, experiment = store
    assert ds.tiles == experiment.tiles and len(ds.tiles) == 2
    assert ds.rounds == experiment.rounds
    assert ds.bits == experiment.bits
    assert [c["name"] for c in ds.channels] == [c.name for c in experiment.channels]
    assert ds.voxel_size_zyx_um == tuple(experiment.voxel_size_zyx_um)
    assert ds.image_shape_zyx == tuple(experiment.image_shape_zyx)
    assert list(ds.codebook.index) == list(experiment.gene_ids)
    np.testing.assert_array_equal(ds.codebook.to_numpy(), np.asarray(experiment.codewords))
    np.testing.assert_array_equal(ds.exp_order.to_numpy(), np.asarray(experiment.exp_order))
    assert ds.bit_linker == {b: experiment.round_of_bit(b) for b in experiment.bits}
    np.testing.assert_allclose(ds.stage_positions.to_numpy(), np.asarray(experiment.stage_positions_um))


def test_placement_is_the_global_registration_and_consistent(store):
    ds, experiment = store
    for t in ds.tiles:
        place = ds.placement(t)
        assert place.spacing_zyx_um == ds.voxel_size_zyx_um == ds.spacing_zyx_um(t)
        # voxel (0, 0, 0) maps to the origin through the affine
        np.testing.assert_allclose(ds.affine_zyx_um(t) @ [0, 0, 0, 1], [*ds.origin_zyx_um(t), 1])
        # registration corrects the stage position by at most a few voxels
        assert np.all(np.abs(np.subtract(place.origin_zyx_um, experiment.stage_position(t))) < 5)


@pytest.mark.parametrize("name", ["camera_data", "corrected_data", "decon_data", "registered_decon_data"])
def test_every_image_kind_reads_as_zarr_reads_it(store, name):
    ds, _ = store
    tile = ds.tiles[-1]
    for channel in (ds.rounds[1], ds.bits[-1]):
        handle = ds.image(tile, channel, name)
        assert tuple(handle.shape) == ds.image_shape_zyx
        array = ds.image(tile, channel, name, numpy=True)
        expected = zarr.open_array(ds.image_group(tile, channel) / name, mode="r")[...]
        np.testing.assert_array_equal(array, expected)
        np.testing.assert_array_equal(handle[1].read().result(), expected[1])
        assert ds.image_attrs(tile, channel, name)["complete"] is True


def test_flow_field_and_bad_names(store):
    ds, _ = store
    field = ds.image(ds.tiles[0], ds.rounds[1], "of_xyz_3x_downsample")
    assert field.shape[0] == 3
    with pytest.raises(InputError, match="no such bit"):
        ds.image(ds.tiles[0], "bit099")
    with pytest.raises(InputError, match="not in the datastore"):
        ds.image(tile_name(7), ds.bits[0])
    with pytest.raises(InputError, match="expected one of"):
        ds.image(ds.tiles[0], ds.bits[0], "nonsense")


def test_tables_counts_and_masks(store):
    ds, _ = store
    spots = ds.spots()
    assigned = ds.spots("assigned")
    assert len(spots) == len(assigned) > 0 and "cell_id" in assigned
    decoded = ds.spots("decoded", tile=ds.tiles[0])
    assert set(decoded["tile"]) == {0}
    assert "report" in ds.spot_metadata("filtered")
    cells = ds.cells()
    counts = ds.counts()
    assert counts.n_obs == len(cells) > 0
    assert list(counts.var_names) == [g for g in ds.codebook.index if not g.startswith("Blank-")]
    for t in ds.tiles:
        labels = ds.labels(t)
        assert labels.shape == ds.image_shape_zyx and labels.dtype == np.uint32
        assert sorted(np.unique(labels[labels > 0]).tolist()) == ds.masks(t).cell_ids


def test_opens_from_the_datastore_folder_and_refuses_others(store, tmp_path):
    ds, _ = store
    assert merfishflow.Datastore(ds.paths.datastore).tiles == ds.tiles
    with pytest.raises(InputError, match="not an experiment folder"):
        merfishflow.Datastore(tmp_path)


def test_an_incomplete_image_is_refused(demo_copy):
    _, _, experiment_dir = demo_copy
    ds = merfishflow.Datastore(experiment_dir)
    (ds.image_group(ds.tiles[0], ds.bits[0]) / "registered_decon_data" / ".zattrs").unlink()
    with pytest.raises(IncompleteDataError):
        ds.image(ds.tiles[0], ds.bits[0])

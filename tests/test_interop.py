"""The outputs opened with the readers users already have (issue 18): ome-zarr, xarray, zarr, spatialdata,
pyarrow/anndata. Run on the tiny finished run, with the exports made by Snakemake's export rules."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import run_snakemake, write_config

import merfishflow
from merfishflow.stages.interop import export_ome_zarr, image_name, labels_name

zarr = pytest.importorskip("zarr")
try:
    import spatialdata  # noqa: F401
    HAS_SPATIALDATA = True
except ImportError:
    HAS_SPATIALDATA = False


@pytest.fixture(scope="module")
def exported(demo_run, tmp_path_factory):
    """A copy of the demo run with the OME-Zarr views of both tiles and (when installed) SpatialData."""
    workdir, _, _ = demo_run
    copy = tmp_path_factory.mktemp("interop") / "run"
    shutil.copytree(workdir, copy, symlinks=True)
    config = write_config(copy / "config.yaml", "experiment", exports={
        "tiles": ["tile0000", "tile0001"], "tiff": [], "spacetx": False, "starfish_codebook": False,
        "ome_zarr": True, "spatialdata": HAS_SPATIALDATA})
    ds = merfishflow.Datastore(copy / "experiment")
    # The exports as explicit targets: `rule all` on a finished run with only export jobs to do fails
    # today (datastore.json is withdrawn at onstart and only put back at onsuccess, after rule all's
    # inputs are checked).
    targets = [str((ds.paths.ome_zarr_view(t) / ".zattrs").relative_to(copy)) for t in ds.tiles]
    if HAS_SPATIALDATA:
        targets.append(str(ds.paths.spatialdata_store.relative_to(copy)))
    run_snakemake(copy, config, *targets)
    return ds


def expected_channels(ds):
    return ([f"polyDT_{r}" for r in ds.rounds] + ["polyDT_round0000_corrected"] + ds.bits,
            [(r, "registered_decon_data") for r in ds.rounds] + [("round0000", "corrected_data")]
            + [(b, "registered_decon_data") for b in ds.bits])


def ome_nodes(path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    return list(Reader(parse_url(str(path)))())


def test_ome_zarr_reader_finds_each_image_in_micrometres_at_its_global_place(exported):
    pytest.importorskip("ome_zarr")
    ds = exported
    names, sources = expected_channels(ds)
    for tile in ds.tiles:
        image = ome_nodes(ds.paths.ome_zarr_view(tile))[0]
        axes = image.metadata["axes"]
        assert [a["name"] for a in axes] == ["c", "z", "y", "x"]
        assert [a.get("unit") for a in axes[1:]] == ["micrometer"] * 3
        scale, translation = image.metadata["coordinateTransformations"][0]
        np.testing.assert_allclose(scale["scale"], [1, *ds.voxel_size_zyx_um])
        np.testing.assert_allclose(translation["translation"], [0, *ds.origin_zyx_um(tile)])
        assert image.metadata["channel_names"] == names
        level0 = np.asarray(image.data[0])
        assert level0.shape == (len(names), *ds.image_shape_zyx)
        for c, (channel, name) in enumerate(sources):
            np.testing.assert_array_equal(level0[c], ds.image(tile, channel, name, numpy=True))


def test_large_tiles_get_a_pyramid_with_doubling_scale(exported, tmp_path):
    pytest.importorskip("ome_zarr")
    ds = exported
    tile = ds.tiles[0]
    out = export_ome_zarr(ds.paths.root, tile, tmp_path / f"{tile}.ome.zarr", pyramid_max_px=16)
    image = ome_nodes(out)[0]
    assert [tuple(d.shape[2:]) for d in image.data] == [(48, 48), (24, 24), (12, 12)]
    for level, (scale, translation) in enumerate(image.metadata["coordinateTransformations"]):
        dz, dy, dx = ds.voxel_size_zyx_um
        np.testing.assert_allclose(scale["scale"], [1, dz, dy * 2 ** level, dx * 2 ** level])
        # a 2^l block mean sits at the block's centre
        oz, oy, ox = ds.origin_zyx_um(tile)
        shift = (2 ** level - 1) / 2
        np.testing.assert_allclose(translation["translation"], [0, oz, oy + shift * dy, ox + shift * dx])
    full = np.asarray(image.data[0][0]).astype(float)
    half = full.reshape(full.shape[0], 24, 2, 24, 2).mean(axis=(2, 4))
    np.testing.assert_array_equal(np.asarray(image.data[1][0]), np.rint(half))


def test_label_images_read_without_merfishflow_match_the_masks(exported):
    ds = exported
    cells = pq.read_table(ds.paths.cells_table).to_pandas()
    for tile in ds.tiles:
        tile_index = int(tile[4:])
        group = zarr.open_group(ds.paths.ome_zarr_view(tile), mode="r", zarr_format=2)
        assert group["labels"].attrs["labels"] == ["cells"]
        assert group["labels/cells"].attrs["image-label"]["source"]["image"] == "../../"
        labels = group["labels/cells/0"][0]
        local = ds.labels(tile)  # the .mfmask, local labels
        assert labels.dtype == np.uint32 and labels.shape == local.shape
        np.testing.assert_array_equal(labels > 0, local > 0)
        pairs = {(t, lab): c for c, ts, ls in zip(cells["cell_id"], cells["instance_tile"], cells["instance_label"])
                 for t, lab in zip(ts, ls)}
        for label in np.unique(local[local > 0]):
            assert set(np.unique(labels[local == label]).tolist()) == {pairs[(tile_index, int(label))]}


def test_xarray_and_zarr_open_the_datastore(exported):
    xr = pytest.importorskip("xarray")
    ds = exported
    group = ds.image_group(ds.tiles[0], ds.bits[0])
    dataset = xr.open_zarr(group, consolidated=False, mask_and_scale=False)
    assert set(dataset.data_vars) == {"camera_data", "corrected_data", "decon_data", "registered_decon_data"}
    assert dataset["registered_decon_data"].dims == ("z", "y", "x")
    np.testing.assert_array_equal(dataset["registered_decon_data"].values, ds.image(ds.tiles[0], ds.bits[0],
                                                                                     numpy=True))
    flow = xr.open_zarr(ds.image_group(ds.tiles[0], ds.rounds[1]), consolidated=False, mask_and_scale=False)
    assert flow["of_xyz_3x_downsample"].dims == ("zyx", "z", "y_coarse", "x_coarse")
    calibrations = xr.open_zarr(ds.paths.calibrations, consolidated=False, mask_and_scale=False)
    assert calibrations["psf_data"].dims[0] == "channel"
    root = zarr.open_group(ds.paths.datastore, mode="r", zarr_format=2)
    assert root["polyDT"][ds.tiles[0]]["round0000.zarr"]["registered_decon_data"].shape == ds.image_shape_zyx


@pytest.mark.skipif(not HAS_SPATIALDATA, reason="spatialdata not installed")
def test_spatialdata_round_trip(exported):
    import spatialdata as sd
    from spatialdata.transformations import get_transformation

    ds = exported
    sdata = sd.read_zarr(ds.paths.spatialdata_store)
    names, _ = expected_channels(ds)
    spots = ds.spots("assigned")
    for tile in ds.tiles:
        image = sdata.images[image_name(tile)]
        assert list(image.coords["c"].values) == names
        np.testing.assert_array_equal(image.sel(c=ds.bits[0]).values, ds.image(tile, ds.bits[0], numpy=True))
        matrix = get_transformation(image, "global").to_affine_matrix(input_axes=("z", "y", "x"),
                                                                      output_axes=("z", "y", "x"))
        np.testing.assert_allclose(matrix @ [0, 0, 0, 1], [*ds.origin_zyx_um(tile), 1])
        np.testing.assert_allclose(matrix @ [1, 1, 1, 1] - matrix @ [0, 0, 0, 1], [*ds.voxel_size_zyx_um, 0])
        labels = sdata.labels[labels_name(tile)].values
        assert labels.ndim == 3
        np.testing.assert_array_equal(labels, ds.cell_labels(tile))
    points = sdata.points["transcripts"].compute()
    assert len(points) == len(spots)
    for column in ("gene_id", "cell_id", "distance", "magnitude", "is_blank", "spot_id"):
        assert column in points
    np.testing.assert_allclose(np.sort(points["x"].to_numpy()), np.sort(spots["global_x_um"].to_numpy()))
    table = sdata.tables["table"]
    attrs = table.uns["spatialdata_attrs"]
    assert attrs["region_key"] == "region" and attrs["instance_key"] == "cell_id"
    assert set(table.obs["region"]) <= set(sdata.labels)
    # every cell's instance key is a label value in the labels element its region names
    for region, cell_id in zip(table.obs["region"], table.obs["cell_id"]):
        assert (sdata.labels[region].values == cell_id).any()
    np.testing.assert_array_equal(np.asarray(table.X.sum(axis=1)).ravel(),
                                  np.asarray(ds.counts().X.sum(axis=1)).ravel())


def test_spot_ids_blank_counts_and_provenance(exported):
    ds = exported
    filtered, assigned = ds.spots(), ds.spots("assigned")
    assert filtered["spot_id"].is_unique and filtered["spot_id"].dtype == np.int64
    np.testing.assert_array_equal(filtered["spot_id"], assigned["spot_id"])
    for tile in ds.tiles:
        decoded = ds.spots("decoded", tile=tile)
        np.testing.assert_array_equal(decoded["spot_id"] // 10**9, decoded["tile"])
    csv = pd.read_csv(ds.paths.assigned_spots_csv)
    np.testing.assert_array_equal(csv["spot_id"], assigned["spot_id"])
    adata = ds.counts()
    assert adata.obs["cell_id"].dtype == np.int32
    blanks = assigned[assigned["is_blank"] & (assigned["cell_id"] > 0)].groupby("cell_id").size()
    expected = blanks.reindex(adata.obs["cell_id"].to_numpy(), fill_value=0).to_numpy()
    np.testing.assert_array_equal(adata.obs["n_blank_spots"].to_numpy(), expected)
    provenance = json.loads(adata.uns["merfishflow"])
    assert provenance["stage"] == "assign" and "parameters" in provenance and "software" in provenance

"""Segmentation, spot assignment and counts as pipeline stages."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import scipy.io

from merfishflow.io import datastore
from merfishflow.cells.assignment import assign_spots, merge_cells
from merfishflow.errors import InputError
from merfishflow.io.masks import read_masks, write_masks
from merfishflow.io.metadata import load_experiment
from merfishflow.io.paths import REGISTERED_DATA, ExperimentPaths

pytestmark = pytest.mark.workflow


def test_h5ad_counts_equal_a_group_by_over_the_spot_table(demo_run):
    import anndata as ad

    _, _, experiment_dir = demo_run
    paths = ExperimentPaths(experiment_dir)
    adata = ad.read_h5ad(paths.counts / "cell_by_gene.h5ad")
    spots = pq.read_table(paths.assigned_spots).to_pandas()
    genes = [g for g in load_experiment(experiment_dir).gene_ids if not g.startswith("Blank-")]
    assert list(adata.var_names) == genes
    in_cells = spots[(spots["cell_id"] > 0) & ~spots["is_blank"]]
    expected = in_cells.groupby(["cell_id", "gene_id"]).size()
    dense = np.asarray(adata.X.todense())
    cells = pq.read_table(paths.cells_table).to_pandas()
    assert len(adata) == len(cells) and adata.obsm["spatial"].shape == (len(cells), 3)
    for (cell, gene), n in expected.items():
        assert dense[list(cells["cell_id"]).index(cell), genes.index(gene)] == n
    assert dense.sum() == len(in_cells)
    assert np.allclose(adata.obsm["spatial"][:, 0], cells["centroid_x_um"])


def test_matrix_market_reads_with_scipy(demo_run):
    _, _, experiment_dir = demo_run
    counts = ExperimentPaths(experiment_dir).counts
    with gzip.open(counts / "matrix.mtx.gz") as f:
        matrix = scipy.io.mmread(f)
    with gzip.open(counts / "features.tsv.gz", "rt") as f:
        features = [line.split("\t") for line in f.read().splitlines()]
    with gzip.open(counts / "barcodes.tsv.gz", "rt") as f:
        barcodes = f.read().splitlines()
    assert matrix.shape == (len(features), len(barcodes))  # genes x cells, as 10x writes it
    assert all(row[2] == "Gene Expression" for row in features)
    import anndata as ad

    adata = ad.read_h5ad(counts / "cell_by_gene.h5ad")
    assert np.array_equal(np.asarray(matrix.todense()).T, np.asarray(adata.X.todense()))


def test_masks_are_placed_and_round_trip(demo_run):
    _, _, experiment_dir = demo_run
    paths = ExperimentPaths(experiment_dir)
    for tile in load_experiment(experiment_dir).tiles:
        masks = read_masks(paths.cell_masks(tile))
        placement = datastore.read_marker(paths.global_registration(tile))
        assert np.allclose(masks.origin_zyx_um, placement["origin_zyx_um"]) and masks.tile == tile
        shape = datastore.read_marker(paths.fiducial_array(tile, "round0000", REGISTERED_DATA))["shape"]
        labels = masks.to_labels()
        assert list(labels.shape) == shape
        again = paths.datastore / f"{tile}_again.mfmask"
        write_masks(again, labels, masks.voxel_size_zyx_um, masks.origin_zyx_um, tile=tile, metadata=masks.metadata)
        assert again.read_bytes() == paths.cell_masks(tile).read_bytes()
        again.unlink()


def test_segment_reads_the_fiducial_that_segmentation_image_names(demo_copy):
    """The default segments the corrected round-0 fiducial and records that (and which data it read);
    ``image: deconvolved`` reads the registered, deconvolved one instead; anything else is a clear error."""
    from merfishflow.stages.cells import fiducial_source, run_segment

    _, _, experiment_dir = demo_copy
    paths = ExperimentPaths(experiment_dir)
    tiles = load_experiment(experiment_dir).tiles
    default = read_masks(paths.cell_masks(tiles[0]))
    assert default.metadata["parameters"]["image"] == "corrected"
    corrected_digest = datastore.marker_digest(paths.fiducial_group(tiles[0], "round0000"))
    assert default.metadata["inputs_sha256"]["fiducials"][tiles[0]] == corrected_digest

    out = run_segment(experiment_dir, tiles[0], tiles=tiles, image="deconvolved", progress=lambda m: None)
    deconvolved = read_masks(out)
    registered = paths.fiducial_array(tiles[0], "round0000", REGISTERED_DATA)
    assert deconvolved.metadata["inputs_sha256"]["fiducials"][tiles[0]] == datastore.marker_digest(registered)
    assert not np.array_equal(deconvolved.to_labels(), default.to_labels())
    with pytest.raises(InputError, match="segmentation.image"):
        fiducial_source(paths, tiles[0], "raw")


def test_spot_table_gains_cell_id_and_csv_keeps_starfish_columns(demo_run):
    _, _, experiment_dir = demo_run
    paths = ExperimentPaths(experiment_dir)
    spots = pq.read_table(paths.assigned_spots).to_pandas()
    filtered = pq.read_table(paths.filtered_spots).to_pandas()
    assert len(spots) == len(filtered) and spots["cell_id"].dtype == np.int32
    assert (spots["cell_id"] > 0).any()
    csv = pd.read_csv(paths.assigned_spots_csv)
    assert list(csv.columns) == ["target", "radius", "spot_id", "distance", "passes_thresholds", "xc", "yc", "zc",
                                 "cell_id"]
    assert (csv["cell_id"].to_numpy() == spots["cell_id"].to_numpy()).all()


def test_a_cell_spanning_a_tile_overlap_is_counted_once(tmp_path):
    # Two 4 x 10 x 10 tiles, tile 1 starts 6 voxels to the right: columns 6-9 of tile 0 are 0-3 of tile 1.
    a = np.zeros((4, 10, 10), np.uint32)
    b = np.zeros((4, 10, 10), np.uint32)
    a[:, 2:6, 4:10] = 1   # spans the overlap ...
    b[:, 2:6, 0:3] = 5    # ... and is cell 5 in tile 1
    a[:, 7:9, 0:3] = 2    # only in tile 0
    b[:, 7:9, 6:9] = 7    # only in tile 1
    b[:, 7:9, 0:2] = 8    # in the overlap, but no tile-0 cell there: its own cell
    sets = []
    for t, (labels, origin) in enumerate(((a, (0.0, 0.0, 0.0)), (b, (0.0, 0.0, 6.0)))):
        path = tmp_path / f"t{t}.mfmask"
        write_masks(path, labels, (1.0, 1.0, 1.0), origin, tile=f"tile{t:04d}")
        sets.append(read_masks(path))
    cells = merge_cells(sets, lambda t: sets[t].to_labels())
    assert cells.instance_to_cell[(0, 1)] == cells.instance_to_cell[(1, 5)]
    assert len(cells.table) == 4
    merged = cells.table.set_index("cell_id").loc[cells.instance_to_cell[(0, 1)]]
    assert merged["n_instances"] == 2 and merged["tiles"] == "0;1"
    # Union in the world: columns 4-9 of tile 0; tile 1's 3 columns lie inside them.
    assert merged["volume_um3"] == pytest.approx(4 * 4 * 6)
    spots = pd.DataFrame({"tile": [0, 1, 1, 0], "z_px": [1.0, 1.0, 1.2, 0.0], "y_px": [3.0, 3.0, 7.6, 0.0],
                          "x_px": [5.0, 1.0, 7.4, 0.0]})
    ids = assign_spots(spots, lambda t: sets[t].to_labels(), cells, expand_um=0.0)
    assert ids[0] == ids[1] == cells.instance_to_cell[(0, 1)]
    assert ids[2] == cells.instance_to_cell[(1, 7)] and ids[3] == 0


def test_spots_just_outside_a_mask_go_to_the_nearest_cell_within_expand_um(tmp_path):
    labels = np.zeros((3, 20, 20), np.uint32)
    labels[:, 2:8, 2:8] = 1
    labels[:, 2:8, 12:18] = 2
    path = tmp_path / "t.mfmask"
    write_masks(path, labels, (0.3, 0.1, 0.1), (0.0, 0.0, 0.0), tile="tile0000")
    masks = read_masks(path)
    cells = merge_cells([masks], lambda t: labels)
    # x = 9: 0.2 µm right of cell 1's edge (x 7); x = 10: 0.2 µm left of cell 2 (x 12) but 0.3 µm from cell 1
    # -> nearest is cell 2; x = 9.6 rounds to 10; y = 13: 0.6 µm below both cells.
    spots = pd.DataFrame({"tile": 0, "z_px": 1.0, "y_px": [5.0, 5.0, 13.0, 4.0],
                          "x_px": [9.0, 9.6, 5.0, 4.0]})
    plain = assign_spots(spots, lambda t: labels, cells, expand_um=0.0)
    ids = assign_spots(spots, lambda t: labels, cells, expand_um=0.3, voxel_size_zyx_um=(0.3, 0.1, 0.1))
    c1, c2 = cells.instance_to_cell[(0, 1)], cells.instance_to_cell[(0, 2)]
    assert list(plain) == [0, 0, 0, c1]
    assert list(ids) == [c1, c2, 0, c1]
    with pytest.raises(InputError):
        assign_spots(spots, lambda t: labels, cells, expand_um=-1.0, voxel_size_zyx_um=(0.3, 0.1, 0.1))

"""Tests of merfishflow.cells.segmentation against the simulator's true cell labels."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import tifffile

from merfishflow.errors import InputError
from merfishflow.cells.segmentation import SegmentationParams, merge_small_regions, segment_cells
from merfishflow.evaluation.cells import mean_iou, mosaic_mean_iou

VOXEL = (0.31, 0.108, 0.108)
SIM = {"seed": 2, "n_tiles_yx": [1, 1], "n_rounds": 1, "n_readout_channels": 1, "n_genes": 1, "n_blanks": 0,
       "codeword_weight": 1, "min_hamming_distance": 1, "image_shape_zyx": [24, 128, 128]}


@pytest.fixture(scope="module")
def tile(tmp_path_factory):
    """(camera-corrected round-0 fiducial in e-, true labels) of one simulated tile."""
    from merfishflow.simulation import simulate_experiment

    paths = simulate_experiment(tmp_path_factory.mktemp("seg") / "exp", SIM)
    raw = tifffile.imread(paths["raw_data"] / "tile0000" / "round0000.tif")[0].astype(np.float32)
    dark = tifffile.imread(paths["dark_frame"]).astype(np.float32)
    fiducial = (raw - dark) * 0.5                                    # e_per_adu
    truth = tifffile.imread(paths["cell_labels"][0])
    return fiducial, truth


@pytest.fixture(scope="module")
def segmented(tile):
    return segment_cells(tile[0], VOXEL)


@pytest.fixture(scope="module")
def segmented_unmerged(tile):
    return segment_cells(tile[0], VOXEL, SegmentationParams(merge_volume_um3=0.0))


def test_runs_and_labels_are_sequential(segmented, tile):
    labels = segmented
    assert labels.dtype == np.uint32 and labels.shape == tile[0].shape
    ids = np.unique(labels)
    assert ids[0] == 0 and np.array_equal(ids[1:], np.arange(1, len(ids)))
    n_true = len(np.unique(tile[1])) - 1
    assert n_true - 3 <= len(ids) - 1 <= n_true + 3


def test_mean_iou_regression(segmented, segmented_unmerged, tile):
    """Default method on this single tile (no neighbours, so most of its 10 cells are cut by its edges):
    0.644 over all 10 true cells, 0.801 over the 8 with >= 2000 visible voxels (the same without the
    merging; 0.643 / 0.800 when the cells are split at full resolution). With one bright threshold level
    for the whole volume (edge_level_sigma_um=0, before the local level): 0.625 / 0.778. Before the global
    threshold, small-hole filling, edge erosion and the 20 um^3 merge volume: 0.548 / 0.682 (docs/masks.md,
    'Accuracy')."""
    assert mean_iou(segmented, tile[1]) >= 0.61
    assert mean_iou(segmented, tile[1], min_voxels=2000) >= 0.76
    assert mean_iou(segmented_unmerged, tile[1]) >= 0.61
    assert mean_iou(segmented_unmerged, tile[1], min_voxels=2000) >= 0.76


def test_merging_only_small_fragments_on_a_lone_tile(segmented, segmented_unmerged, tile):
    """Merging regions under the default 20 um^3 costs nothing here (0.644 with 9 cells, the same without;
    10 true); the earlier 60 um^3 merged cells cut by the tile's edge into their neighbours (0.489, 6 cells)."""
    merged, unmerged = mean_iou(segmented, tile[1]), mean_iou(segmented_unmerged, tile[1])
    assert merged >= unmerged - 0.02
    assert segmented.max() <= segmented_unmerged.max()
    coarse = segment_cells(tile[0], VOXEL, SegmentationParams(merge_volume_um3=60.0))
    assert mean_iou(coarse, tile[1]) < merged - 0.05
    assert coarse.max() < segmented.max()


def test_distance_seeds_alone(tile):
    """nucleus_log_contrast=0 (distance-maximum seeds only, split at necks): 0.642 on this tile (0.650 split
    at full resolution), where the cut cells' nuclei are mostly outside it; over the three 2 x 2 mosaics of
    docs/masks.md it scored 0.631 against the nucleus markers' 0.688 (both split at full resolution, with
    one bright threshold level for the whole volume)."""
    labels = segment_cells(tile[0], VOXEL, SegmentationParams(nucleus_log_contrast=0.0))
    assert 0.62 <= mean_iou(labels, tile[1]) <= 0.66


def test_local_bright_level_beats_one_level(segmented, tile):
    """The threshold's bright level measured locally (edge_level_sigma_um, default 1 um) against one level for
    the whole volume (0): 0.644 vs 0.625 on this tile; on the mosaics of docs/masks.md 0.710 vs 0.690 (seeds
    5, 7, 9) and 0.724 vs 0.701 (held-out seeds 11, 13, 15, 17). The stain's granular texture makes the
    cytoplasm next to an edge dimmer or brighter than the bright class's median."""
    one_level = segment_cells(tile[0], VOXEL, SegmentationParams(edge_level_sigma_um=0.0))
    assert mean_iou(segmented, tile[1]) >= mean_iou(one_level, tile[1]) + 0.01


@pytest.mark.xfail(strict=False, reason="target not reached on this lone 14 um tile, whose cells are mostly cut by "
                                        "its edges: measured 0.644; see docs/masks.md, 'Accuracy'")
def test_mean_iou_target(segmented, tile):
    assert mean_iou(segmented, tile[1]) >= 0.7


def test_cells_split_on_bins_score_as_at_full_resolution(segmented, tile):
    """The default splits the cells on 3 x 3 bins (working_voxel_yx_um 0.3 at 0.108 um pixels; 128 pixels
    leave a partial bin): 0.644 here against 0.643 at full resolution (the mosaics of docs/masks.md: 0.710
    against 0.703), for a twelfth of the time. Its cells lie inside the full-resolution foreground."""
    from merfishflow.cells.segmentation import _smoothed_foreground

    params = SegmentationParams()
    assert params.binning_factor(0.108) == 3 and params.binning_factor(0.3) == 1
    assert SegmentationParams(working_voxel_yx_um=0.0).binning_factor(0.108) == 1
    full = segment_cells(tile[0], VOXEL, SegmentationParams(working_voxel_yx_um=0.0))
    assert not np.array_equal(segmented, full)
    assert abs(mean_iou(segmented, tile[1]) - mean_iou(full, tile[1])) <= 0.02
    foreground = _smoothed_foreground(tile[0].astype(np.float32), np.asarray(VOXEL), params)
    assert (segmented > 0).any() and not (segmented > 0)[~foreground].any()


def test_merge_small_regions():
    labels = np.zeros((4, 12, 12), np.int32)
    labels[:, :, :6] = 1          # big
    labels[:, :3, 6:8] = 2        # small: shares 12 faces with 1 and 8 with 3, so joins 1
    labels[:, 3:, 6:] = 3         # big
    labels[:, 0, 10:] = 4         # small but touching no other region: kept
    out = merge_small_regions(labels, min_voxels=40)
    assert set(np.unique(out[labels == 2])) == {1}
    assert set(np.unique(out[labels == 4])) == {4}
    assert np.array_equal(out[labels == 1], labels[labels == 1]) and np.array_equal(out[labels == 3], labels[labels == 3])
    np.testing.assert_array_equal(merge_small_regions(labels, min_voxels=1), labels)


def test_mosaic_mean_iou_counts_a_cell_spanning_tiles_once():
    """Two tiles of 10 x 10 voxels overlapping by 4 in x; true cell 7 spans both."""
    truth_a = np.zeros((1, 10, 10), np.int32)
    truth_b = np.zeros((1, 10, 10), np.int32)
    truth_a[0, 2:8, 4:10] = 7
    truth_b[0, 2:8, 0:4] = 7                      # the same cell seen from tile b (its x 6..9 overlap a's)
    origins = [(0.0, 0.0, 0.0), (0.0, 0.0, 6.0)]
    perfect = mosaic_mean_iou([truth_a * 3, truth_b * 3], [truth_a, truth_b], origins, (1.0, 1.0, 1.0))
    assert perfect == 1.0
    # Predicted as one cell in tile a but missed in tile b: tile b owns x >= 8 (global), the cell spans
    # global x 4..9, so 2 of its 6 columns are lost.
    missed = mosaic_mean_iou([truth_a * 3, np.zeros_like(truth_b)], [truth_a, truth_b], origins, (1.0, 1.0, 1.0))
    assert missed == pytest.approx(4 / 6)
    with pytest.raises(InputError):
        mosaic_mean_iou([truth_a], [truth_a, truth_b], origins, (1.0, 1.0, 1.0))


def test_mosaic_mean_iou_can_leave_out_slivers():
    """A true cell of 2 visible voxels that nothing predicts: counted as 0 by default, left out above 2 um^3."""
    truth = np.zeros((1, 10, 10), np.int32)
    truth[0, 2:8, 2:8] = 1
    truth[0, 0, 8:10] = 2                          # the sliver, 2 um^3 at 1 um voxels
    predicted = np.where(truth == 1, 5, 0)
    args = ([predicted], [truth], [(0.0, 0.0, 0.0)], (1.0, 1.0, 1.0))
    assert mosaic_mean_iou(*args) == pytest.approx(0.5)
    assert mosaic_mean_iou(*args, min_volume_um3=2.0) == pytest.approx(0.5)     # 2 voxels: still in
    assert mosaic_mean_iou(*args, min_volume_um3=2.5) == 1.0


def test_foreground_caps_the_score(segmented, tile):
    """Ceiling analysis of docs/masks.md, 'Accuracy': our foreground split perfectly (each foreground
    voxel given its nearest true label) scores 0.758 on this tile (0.741 with one bright threshold level
    for the whole volume, 0.676 with the per-plane threshold before); our split loses another 0.11 (0.644)."""
    from scipy import ndimage as ndi

    truth = tile[1]
    _, nearest = ndi.distance_transform_edt(truth == 0, sampling=VOXEL, return_indices=True)
    perfect_split = np.where(segmented > 0, truth[tuple(nearest)], 0)
    cap = mean_iou(perfect_split, truth)
    assert 0.72 <= cap <= 0.76
    assert mean_iou(segmented, truth) <= cap + 1e-9


def test_deterministic(tile, segmented):
    again = segment_cells(tile[0].copy(), VOXEL, SegmentationParams())
    np.testing.assert_array_equal(again, segmented)


def test_blank_and_noise_give_no_cells():
    rng = np.random.default_rng(0)
    for image in (np.zeros((6, 32, 32), np.uint16), np.full((6, 32, 32), 7.0),
                  rng.poisson(20, size=(6, 32, 32)).astype(np.float32)):
        labels = segment_cells(image, VOXEL)
        assert labels.dtype == np.uint32 and labels.shape == image.shape and not labels.any()


def test_two_touching_spheres_are_split():
    """Two overlapping balls (a neck between them) on a dim background: two cells."""
    shape, v = (20, 96, 128), np.array(VOXEL)
    grid = np.indices(shape).transpose(1, 2, 3, 0) * v
    centres = [np.array([3.0, 5.0, 3.8]), np.array([3.0, 5.0, 10.0])]
    image = np.full(shape, 60.0, np.float32)
    for c in centres:
        image[((grid - c) ** 2).sum(-1) <= 3.3 ** 2] = 1000.0
    labels = segment_cells(image, VOXEL)
    assert labels.max() == 2
    assert {labels[tuple(np.round(c / v).astype(int))] for c in centres} == {1, 2}


def test_mean_iou_definition():
    truth = np.zeros((1, 4, 8), np.int32)
    truth[0, :, :4] = 1
    truth[0, :, 4:] = 2
    pred = np.zeros_like(truth)
    pred[0, :, :6] = 5                      # covers all of 1 and half of 2
    # cell 1: 16 / 24; cell 2: best overlap is 8 voxels with 5 -> 8 / (16 + 24 - 8)
    assert mean_iou(pred, truth) == pytest.approx((16 / 24 + 8 / 32) / 2)
    assert mean_iou(truth, truth) == 1.0
    assert mean_iou(np.zeros_like(truth), truth) == 0.0
    assert np.isnan(mean_iou(truth, np.zeros_like(truth)))
    truth[0, 0, 7] = 3                      # a 1-voxel cell, left out by min_voxels
    assert mean_iou(pred, truth, min_voxels=2) == pytest.approx((16 / 24 + 8 / 31) / 2)   # cell 2 now has 15 voxels
    with pytest.raises(InputError):
        mean_iou(pred[:, :2], truth)


def test_params_and_input_errors():
    p = SegmentationParams()
    assert SegmentationParams.from_dict(p.to_dict()) == p
    with pytest.raises(InputError, match="unknown"):
        SegmentationParams.from_dict({"sigma": 1})
    with pytest.raises(InputError, match="threshold_fraction"):
        SegmentationParams(threshold_fraction=1.5)
    with pytest.raises(InputError, match="method"):
        SegmentationParams(method="magic")
    with pytest.raises(InputError, match="nucleus_log_contrast"):
        SegmentationParams(nucleus_log_contrast=-0.3)
    with pytest.raises(InputError, match="nucleus_sigma_um"):
        SegmentationParams(nucleus_sigma_um=0)
    with pytest.raises(InputError, match="edge_level_sigma_um"):
        SegmentationParams(edge_level_sigma_um=-1.0)
    with pytest.raises(InputError, match="3D"):
        segment_cells(np.zeros((8, 8)), VOXEL)
    with pytest.raises(InputError, match="NaN"):
        segment_cells(np.full((2, 8, 8), np.nan), VOXEL)
    with pytest.raises(InputError, match="voxel_size"):
        segment_cells(np.zeros((2, 8, 8)), (0.3, 0.1))


@pytest.mark.skipif(importlib.util.find_spec("cellpose") is not None, reason="cellpose is installed")
def test_cellpose_missing_is_a_clear_error():
    with pytest.raises(InputError, match="cellpose.*not installed.*watershed"):
        segment_cells(np.zeros((4, 16, 16), np.float32), VOXEL, {"method": "cellpose"})

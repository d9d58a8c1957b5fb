"""Segmentation of a simulated mosaic: each tile with its neighbours' band, cells merged across tiles.

This is what the segment and assign stages do (merfishflow.stages.cells), on
the camera-corrected round-0 fiducials placed at the simulator's true stage
positions (the pipeline uses the registered, deconvolved ones placed by
global registration), scored once per cell across the mosaic.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from merfishflow.cells.assignment import merge_cells
from merfishflow.io.masks import read_masks, write_masks
from merfishflow.cells.segmentation import SegmentationParams, segment_cells
from merfishflow.evaluation.cells import mosaic_mean_iou
from merfishflow.cells.canvas import assemble_canvas
from merfishflow.image.stitching import DEFAULT_CONTEXT_UM

# 2 x 2 tiles of 27.6 µm: about 70 cells (a 1 x 2 demo-sized mosaic has 20, too few to compare methods:
# the mean IoU of either method moves by +-0.1 between seeds there).
SIM = {"seed": 5, "n_tiles_yx": [2, 2], "n_rounds": 1, "n_readout_channels": 1, "n_genes": 1, "n_blanks": 0,
       "codeword_weight": 1, "min_hamming_distance": 1, "image_shape_zyx": [24, 256, 256]}


def simulate_mosaic(folder, seed):
    """(fiducials, true labels, true origins µm, voxel size) of a simulated 2 x 2 mosaic."""
    from merfishflow.simulation import simulate_experiment

    paths = simulate_experiment(folder / "exp", dict(SIM, seed=seed))
    dark = tifffile.imread(paths["raw_data"] / "camera_dark_frame.tif").astype(np.float32)
    transforms = json.loads((paths["ground_truth"] / "transforms.json").read_text())
    tiles = transforms["tiles"]
    images = [(tifffile.imread(paths["raw_data"] / t["name"] / "round0000.tif")[0].astype(np.float32) - dark) * 0.5
              for t in tiles]
    truths = [tifffile.imread(paths["ground_truth"] / f"cells_{t['name']}.tif") for t in tiles]
    return images, truths, [t["true_stage_zyx_um"] for t in tiles], transforms["voxel_size_zyx_um"]


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory):
    return simulate_mosaic(tmp_path_factory.mktemp("mosaic"), SIM["seed"])


def segment_mosaic(images, origins, voxel, context_um, params, folder):
    """Per-tile labels (cropped back from each canvas), merged across overlaps by the assign stage's
    merge_cells (through mask files in ``folder``), in global cell ids; and the number of cells."""
    margin = int(round(context_um / voxel[1]))
    mask_sets = []
    for k, image in enumerate(images):
        canvas, _ = assemble_canvas(k, origins, image.shape, voxel, margin, lambda i, w: images[i][w])
        cut = segment_cells(canvas, voxel, params)
        path = folder / f"tile{k:04d}.mfmask"
        write_masks(path, cut[:, margin:cut.shape[1] - margin, margin:cut.shape[2] - margin], voxel, origins[k])
        mask_sets.append(read_masks(path))
    labels = [m.to_labels() for m in mask_sets]
    cells = merge_cells(mask_sets, lambda t: labels[t])
    return [cells.global_labels(k, lab) for k, lab in enumerate(labels)], len(cells.table)


@pytest.fixture(scope="module")
def scores(mosaic, tmp_path_factory):
    images, truths, origins, voxel = mosaic
    out = {}
    for name, context, params in [("pipeline", DEFAULT_CONTEXT_UM, SegmentationParams()),
                                  ("tile_alone_unmerged", 0.0, SegmentationParams(merge_volume_um3=0.0))]:
        merged, n_cells = segment_mosaic(images, origins, voxel, context, params, tmp_path_factory.mktemp(name))
        out[name] = (mosaic_mean_iou(merged, truths, origins, voxel), n_cells)
    out["n_true"] = len(np.unique(np.concatenate([np.unique(t[t > 0]) for t in truths])))
    print(out)
    return out


def test_context_beats_the_lone_tile_watershed(scores):
    """Measured (seed 5): 0.743 (93 cells, 68 true) vs 0.697 (72 cells) for each tile alone, unmerged.
    With one bright threshold level for the whole volume (edge_level_sigma_um=0): 0.727 (86 cells) vs
    0.676 (73 cells); split at full resolution then: 0.720 vs 0.666. Before the global threshold,
    small-hole filling and edge erosion: 0.615 vs 0.571."""
    pipeline, alone = scores["pipeline"], scores["tile_alone_unmerged"]
    assert pipeline[0] >= alone[0] + 0.03
    assert pipeline[0] >= 0.70


def test_mosaic_mean_iou_target(scores, tmp_path_factory):
    """The target over three mosaics, so that one lucky seed does not decide it. Measured: 0.743, 0.687 and
    0.701 on seeds 5, 7 and 9 (mean 0.710); with one bright threshold level for the whole volume
    (edge_level_sigma_um=0) 0.727, 0.664 and 0.680 (mean 0.690, short of the target). On the held-out
    seeds 11, 13, 15 and 17 of docs/masks.md: mean 0.724 (0.701 before)."""
    values = [scores["pipeline"][0]]
    for seed in (7, 9):
        images, truths, origins, voxel = simulate_mosaic(tmp_path_factory.mktemp(f"mosaic{seed}"), seed)
        merged, _ = segment_mosaic(images, origins, voxel, DEFAULT_CONTEXT_UM, SegmentationParams(),
                                   tmp_path_factory.mktemp(f"masks{seed}"))
        values.append(mosaic_mean_iou(merged, truths, origins, voxel))
    print("mosaic mean IoU, seeds 5, 7, 9:", values)
    assert np.mean(values) >= 0.7


def test_assemble_canvas_places_neighbours_and_repeats_the_edge():
    rng = np.random.default_rng(0)
    a = rng.random((3, 8, 10)).astype(np.float32)
    b = rng.random((3, 8, 10)).astype(np.float32)
    # b starts 7 voxels right of a (x) and 1 plane deeper (z), so they overlap in x columns 7..9 of a.
    origins = [(0.0, 0.0, 0.0), (2.0, 0.0, 7.0)]
    voxel = (2.0, 1.0, 1.0)
    canvas, used = assemble_canvas(0, origins, a.shape, voxel, 2, lambda i, w: (a, b)[i][w])
    assert canvas.shape == (3, 12, 14) and used == [0, 1]
    np.testing.assert_array_equal(canvas[:, 2:10, 2:12], a)                 # own data wins in the overlap
    np.testing.assert_array_equal(canvas[1:, 2:10, 12:14], b[:2, :, 3:5])   # neighbour, shifted one plane
    np.testing.assert_array_equal(canvas[0, 2:10, 12:14], b[0, :, 3:5])     # missing plane: nearest known one
    np.testing.assert_array_equal(canvas[:, 0, 2:12], a[:, 0])              # no tile above: the edge repeats
    np.testing.assert_array_equal(canvas[:, 11, 2:12], a[:, -1])
    alone, used = assemble_canvas(0, origins[:1], a.shape, voxel, 0, lambda i, w: a[w])
    np.testing.assert_array_equal(alone, a)


def test_a_segment_job_reads_only_the_tiles_near_it(tmp_path):
    from merfishflow.workflow.config import validate_config
    from merfishflow.workflow.pipeline import Pipeline

    config = validate_config({"experiment_dir": str(tmp_path / "exp"),
                              "simulation": {"enabled": True, "params": {"n_tiles_yx": [3, 3],
                                                                         "image_shape_zyx": [4, 128, 128]}}})
    pipeline = Pipeline.from_config(config, check_files=False)
    # 13.8 µm tiles every 11.1 µm; a band of 3 + 5 µm reaches the next tile, not the one after.
    assert pipeline.segment_context_tiles("tile0000") == ["tile0000", "tile0001", "tile0003", "tile0004"]
    assert pipeline.segment_context_tiles("tile0004") == pipeline.experiment.tiles
    config["segmentation"] = {"context_um": 0}
    assert Pipeline.from_config(config, check_files=False).segment_context_tiles("tile0004") == ["tile0004"]

"""Tests of the MERFISH simulator: codebook, raw_data contract, ground truth and physics."""

from __future__ import annotations

import csv
import itertools
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml

from merfishflow.errors import InputError
from merfishflow.simulation import SimulationParams, evaluate_deformation, make_codebook, simulate_experiment
from merfishflow.simulation.experiment import TRUTH_MARGIN_UM

SMALL = dict(
    seed=7,
    n_tiles_yx=(1, 2),
    n_rounds=4,
    n_readout_channels=2,
    image_shape_zyx=(10, 64, 64),
    n_genes=8,
    n_blanks=2,
    spots_per_cell=40.0,
)


@pytest.fixture(scope="module")
def small_experiment(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim") / "experiment"
    messages = []
    out = simulate_experiment(root, SMALL, progress=messages.append)
    return root, out, messages


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


# codebook ---------------------------------------------------------------------------------


def pairwise_min_distance(code):
    d = (code[:, None, :] != code[None, :, :]).sum(-1)
    return d[~np.eye(len(code), dtype=bool)].min()


def test_codebook_weight_distance_and_determinism():
    code = make_codebook(16, 25, weight=4, min_hamming_distance=4, seed=3)
    assert code.shape == (25, 16) and code.dtype == np.uint8
    assert set(np.unique(code)) <= {0, 1}
    assert (code.sum(1) == 4).all()
    assert pairwise_min_distance(code) >= 4
    assert len({tuple(r) for r in code}) == 25
    assert np.array_equal(code, make_codebook(16, 25, weight=4, min_hamming_distance=4, seed=3))
    assert not np.array_equal(code, make_codebook(16, 25, weight=4, min_hamming_distance=4, seed=4))


def test_codebook_reaches_the_optimum_and_refuses_beyond():
    code = make_codebook(16, 140, seed=0)
    assert pairwise_min_distance(code) >= 4
    with pytest.raises(InputError, match="n_codewords=141"):
        make_codebook(16, 141, seed=0)


def test_codebook_larger_distance_and_bad_arguments():
    code = make_codebook(12, 6, weight=4, min_hamming_distance=6, seed=1)
    assert pairwise_min_distance(code) >= 6
    with pytest.raises(InputError, match="weight"):
        make_codebook(8, 2, weight=9)
    with pytest.raises(InputError):
        make_codebook(8, 20, weight=4, min_hamming_distance=4)  # at most 14 exist


# parameters -------------------------------------------------------------------------------


def test_params_roundtrip_and_validation():
    p = SimulationParams.from_dict(SMALL)
    d = p.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert SimulationParams.from_dict(d) == p
    assert p.n_bits == 8
    with pytest.raises(InputError, match="n_tilez"):
        SimulationParams.from_dict({"n_tilez": 3})
    with pytest.raises(InputError, match="numerical_aperture"):
        SimulationParams(numerical_aperture=1.5)
    with pytest.raises(InputError, match="image_shape_zyx"):
        SimulationParams.from_dict({"image_shape_zyx": [10, 64]})
    with pytest.raises(InputError, match="n_readout_channels"):
        SimulationParams(n_readout_channels=4)
    with pytest.raises(InputError, match="seed"):
        SimulationParams(seed=True)


def test_impossible_codebook_fails_before_writing(tmp_path):
    with pytest.raises(InputError, match="Johnson"):
        simulate_experiment(tmp_path / "e", dict(SMALL, n_genes=30))
    assert not (tmp_path / "e" / "raw_data").exists()


# raw_data contract ------------------------------------------------------------------------


def test_raw_data_follows_the_contract(small_experiment):
    root, out, messages = small_experiment
    raw = root / "raw_data"
    p = SimulationParams.from_dict(SMALL)
    meta = yaml.safe_load((raw / "experiment.yaml").read_text())
    assert meta["format_version"] == 1
    assert meta["voxel_size_zyx_um"] == list(p.voxel_size_zyx_um)
    assert meta["image_shape_zyx"] == list(p.image_shape_zyx)
    assert meta["camera"]["dark_frame"] == "camera_dark_frame.tif"
    assert meta["camera"]["hot_pixel_map"] is None
    names = [c["name"] for c in meta["channels"]]
    roles = [c["role"] for c in meta["channels"]]
    assert names == ["polyDT", "readout_561", "readout_647"]
    assert roles == ["fiducial", "readout", "readout"]

    codebook = read_csv(raw / "codebook.csv")
    assert codebook[0] == ["gene_id"] + [f"bit{b:02d}" for b in range(1, 9)]
    genes = [row[0] for row in codebook[1:]]
    assert genes[:2] == ["Gene-001", "Gene-002"] and genes[-2:] == ["Blank-01", "Blank-02"]
    assert all(sum(int(v) for v in row[1:]) == 4 for row in codebook[1:])

    order = read_csv(raw / "exp_order.csv")
    assert order[0] == ["round", "readout_561", "readout_647"]
    assert order[1:] == [[str(k), str(2 * k + 1), str(2 * k + 2)] for k in range(4)]

    stage = read_csv(raw / "stage_positions.csv")
    assert stage[0] == ["tile", "stage_z_um", "stage_y_um", "stage_x_um"]
    assert [int(r[0]) for r in stage[1:]] == [0, 1]
    assert float(stage[2][3]) == pytest.approx(64 * 0.108 * 0.8, abs=1e-6)
    assert all(float(r[1]) == 0.0 for r in stage[1:])

    dark = tifffile.imread(raw / "camera_dark_frame.tif")
    assert dark.shape == (64, 64) and dark.dtype == np.float32

    for tile, rnd in itertools.product(range(2), range(4)):
        path = raw / f"tile{tile:04d}" / f"round{rnd:04d}.tif"
        with tifffile.TiffFile(path) as tif:
            assert len(tif.pages) == 3 * 10
            assert tif.pages[0].shape == (64, 64) and tif.pages[0].dtype == np.uint16
        assert tifffile.imread(path).shape == (3, 10, 64, 64)
    assert len(out["raw_tiffs"]) == 8

    # experiment.yaml is written last: it marks raw_data complete.
    last = (raw / "experiment.yaml").stat().st_mtime_ns
    assert all(f.stat().st_mtime_ns <= last for f in raw.rglob("*") if f.is_file())
    assert not list(root.rglob(".tmp-*"))
    assert len(messages) == 2


def test_refuses_to_overwrite(small_experiment):
    root, _, _ = small_experiment
    with pytest.raises(InputError, match="overwrite"):
        simulate_experiment(root, SMALL)


# ground truth -----------------------------------------------------------------------------


def test_spots_ground_truth(small_experiment):
    root, out, _ = small_experiment
    gt = root / "ground_truth"
    spots = pd.read_parquet(gt / "spots.parquet")
    transforms = json.loads((gt / "transforms.json").read_text())
    assert list(spots.columns)[:12] == ["spot_id", "gene_id", "barcode_id", "cell_id", "tile", "z_px", "y_px",
                                        "x_px", "global_z_um", "global_y_um", "global_x_um", "photons"]
    assert spots.spot_id.dtype == np.int64 and spots.barcode_id.dtype == np.int32
    assert not spots.gene_id.str.startswith("Blank-").any()
    codebook = pd.read_csv(root / "raw_data" / "codebook.csv")
    assert (codebook.gene_id.values[spots.barcode_id] == spots.gene_id).all()

    shape = np.array(SMALL["image_shape_zyx"])
    px = spots[["z_px", "y_px", "x_px"]].to_numpy()
    in_frame = np.all((px >= -0.5) & (px < shape - 0.5), axis=1)
    # Molecules up to TRUTH_MARGIN_UM outside a frame are listed too, flagged in_stack = False.
    assert spots.in_stack.dtype == bool and (spots.in_stack.to_numpy() == in_frame).all()
    assert (~spots.in_stack).any() and spots.in_stack.any()
    reach = TRUTH_MARGIN_UM / np.array(SimulationParams.from_dict(SMALL).voxel_size_zyx_um)
    assert (px >= -0.5 - reach).all() and (px < shape - 0.5 + reach).all()

    voxel = np.array(transforms["voxel_size_zyx_um"])
    true = np.array([t["true_stage_zyx_um"] for t in transforms["tiles"]])
    glob = spots[["global_z_um", "global_y_um", "global_x_um"]].to_numpy()
    np.testing.assert_allclose(glob, true[spots.tile] + px * voxel, atol=1e-12)

    # A molecule in the overlap appears in both tiles at the same global position.
    both = spots.groupby("spot_id").tile.nunique()
    shared = both[both == 2].index
    assert len(shared) >= 1
    for sid in shared:
        rows = spots[spots.spot_id == sid]
        g = rows[["global_z_um", "global_y_um", "global_x_um"]].to_numpy()
        assert np.abs(g[0] - g[1]).max() < 1e-9
        other = rows.iloc[1][["z_px", "y_px", "x_px"]].to_numpy(float)
        # ... and both tiles' pixel positions differ by the true stage offset.
        expect = rows.iloc[0][["z_px", "y_px", "x_px"]].to_numpy(float) + (true[rows.iloc[0].tile]
                                                                            - true[rows.iloc[1].tile]) / voxel
        np.testing.assert_allclose(other, expect, atol=1e-9)

    # Counts: cells get Poisson(spots_per_cell) molecules; a tenth lies outside cells.
    cells = pd.read_parquet(gt / "cells.parquet")
    assert abs(cells.n_spots.mean() - SMALL["spots_per_cell"]) < 5 * np.sqrt(SMALL["spots_per_cell"] / len(cells))
    unique = spots.drop_duplicates("spot_id")
    assert 0.0 < (unique.cell_id == 0).mean() < 0.3
    # Molecules lie in the labelled cell of the ground-truth label image.
    agree = []
    for tile in range(2):
        labels = tifffile.imread(gt / f"cells_tile{tile:04d}.tif")
        assert labels.shape == tuple(shape) and labels.dtype == np.uint32
        sub = spots[(spots.tile == tile) & spots.in_stack]
        idx = np.clip(np.rint(sub[["z_px", "y_px", "x_px"]].to_numpy()).astype(int), 0, shape - 1)
        agree.append(labels[tuple(idx.T)] == sub.cell_id.to_numpy())
    assert np.concatenate(agree).mean() > 0.9

    # Dropouts are consistent with bit_photons.
    bit_photons = np.stack(spots.bit_photons.to_numpy())
    on = codebook.iloc[:, 1:].to_numpy()[spots.barcode_id]
    dropped = ((spots.dropped_bits_mask.to_numpy()[:, None] >> np.arange(8)) & 1).astype(bool)
    assert ((bit_photons > 0) == (on.astype(bool) & ~dropped)).all()
    assert not (dropped & ~on.astype(bool)).any()


def test_transforms_and_deformation_fields(small_experiment):
    root, out, _ = small_experiment
    gt = root / "ground_truth"
    transforms = json.loads((gt / "transforms.json").read_text())
    assert "p + shift_zyx_px[r] + deformation_r(w)" in transforms["convention"]
    assert transforms["rounds"][0]["shift_zyx_px"] == [0.0, 0.0, 0.0]
    assert transforms["rounds"][0]["deformation"] is None
    for tile in transforms["tiles"]:
        err = np.array(tile["true_stage_zyx_um"]) - np.array(tile["nominal_stage_zyx_um"])
        np.testing.assert_allclose(err, tile["stage_error_zyx_um"], atol=1e-12)
    voxel = np.array(transforms["voxel_size_zyx_um"])
    origin = np.array(transforms["tiles"][1]["true_stage_zyx_um"])
    field = tifffile.imread(gt / "deformation_tile0001_round0002.tif")
    assert field.shape == (3, 10, 64, 64) and field.dtype == np.float32
    p = np.array([[3, 10, 50], [7, 60, 2]])
    expect = evaluate_deformation(transforms, 2, origin + p * voxel)
    np.testing.assert_allclose(field[:, p[:, 0], p[:, 1], p[:, 2]].T, expect, atol=1e-4)
    assert 0.2 < np.sqrt((field[1:] ** 2).mean()) < 3.0
    assert json.loads((gt / "simulation.json").read_text()) == SimulationParams.from_dict(SMALL).to_dict()


def test_spot_intensities_follow_codebook_and_transform_convention(small_experiment):
    root, _, _ = small_experiment
    raw, gt = root / "raw_data", root / "ground_truth"
    spots = pd.read_parquet(gt / "spots.parquet")
    transforms = json.loads((gt / "transforms.json").read_text())
    codebook = pd.read_csv(raw / "codebook.csv").iloc[:, 1:].to_numpy()
    dark = tifffile.imread(raw / "camera_dark_frame.tif")
    e_per_adu = SimulationParams.from_dict(SMALL).e_per_adu
    shape = np.array(SMALL["image_shape_zyx"])
    bright = spots[(spots.tile == 0) & spots.in_stack & (spots.photons > np.median(spots.photons))]
    p = bright[["z_px", "y_px", "x_px"]].to_numpy()
    world = bright[["global_z_um", "global_y_um", "global_x_um"]].to_numpy()
    on_vals, off_vals, wrong_sign = [], [], []
    for r in range(SMALL["n_rounds"]):
        image = (tifffile.imread(raw / "tile0000" / f"round{r:04d}.tif").astype(float) - dark) * e_per_adu
        move = np.array(transforms["rounds"][r]["shift_zyx_px"]) + evaluate_deformation(transforms, r, world)
        q = np.rint(p + move).astype(int)
        q_wrong = np.rint(p - move).astype(int)
        for c in range(2):
            bit = 2 * r + c
            inside = np.all((q >= 0) & (q < shape), axis=1) & np.all((q_wrong >= 0) & (q_wrong < shape), axis=1)
            vals = image[1 + c][tuple(q[inside].T)]
            on = codebook[bright.barcode_id.to_numpy()[inside], bit] == 1
            on_vals.append(vals[on])
            off_vals.append(vals[~on])
            if r > 0:
                wrong_sign.append(image[1 + c][tuple(q_wrong[inside][on].T)])
    on_mean = np.concatenate(on_vals).mean()
    off_mean = np.concatenate(off_vals).mean()
    background = SimulationParams.from_dict(SMALL).background_photons
    assert on_mean > background + 30
    assert abs(off_mean - background) < 0.5 * background
    # The opposite sign of the transform misses the spots.
    assert np.concatenate(wrong_sign).mean() < 0.5 * (on_mean + off_mean)


def test_hot_pixels_in_every_frame(small_experiment):
    root, _, _ = small_experiment
    raw, gt = root / "raw_data", root / "ground_truth"
    hot = pd.read_csv(gt / "hot_pixels.csv")
    assert len(hot) == SimulationParams().n_hot_pixels
    dark = tifffile.imread(raw / "camera_dark_frame.tif")
    np.testing.assert_allclose(dark[hot.y, hot.x], 100 + hot.dark_adu, atol=15)
    lowest = None
    for path in sorted(raw.glob("tile*/round*.tif")):
        image = tifffile.imread(path)
        assert (image[:, :, hot.y, hot.x] > 1000).all()
        frame_min = image.min(axis=(0, 1))
        lowest = frame_min if lowest is None else np.minimum(lowest, frame_min)
    # Only the hot pixels are bright in every frame, channel and plane.
    assert set(zip(*np.nonzero(lowest > 1000))) == set(zip(hot.y, hot.x))


# registration truth -----------------------------------------------------------------------


@pytest.mark.parametrize("fiducial_kind", ["polydt", "beads"])
def test_phase_correlation_recovers_round_shift(tmp_path, fiducial_kind):
    from scipy.signal.windows import tukey
    from skimage.registration import phase_cross_correlation

    params = dict(seed=3, n_tiles_yx=(1, 1), n_rounds=4, n_readout_channels=2, image_shape_zyx=(24, 96, 96),
                  n_genes=4, n_blanks=0, deformation_amplitude_px=0.05, spots_per_cell=10.0,
                  fiducial_kind=fiducial_kind, bead_spacing_px=30.0)
    simulate_experiment(tmp_path, params)
    transforms = json.loads((tmp_path / "ground_truth" / "transforms.json").read_text())
    dark = tifffile.imread(tmp_path / "raw_data" / "camera_dark_frame.tif")

    def fiducial(r):
        image = tifffile.imread(tmp_path / "raw_data" / "tile0000" / f"round{r:04d}.tif")[0] - dark
        image = image - image.mean()
        # Taper the borders: content entering/leaving the field would bias the estimate toward 0.
        w = [tukey(n, 0.3) for n in image.shape]
        return image * w[0][:, None, None] * w[1][None, :, None] * w[2][None, None, :]

    reference = fiducial(0)
    for r in range(1, 4):
        found, _, _ = phase_cross_correlation(reference, fiducial(r), upsample_factor=10)
        truth = np.array(transforms["rounds"][r]["shift_zyx_px"])
        # skimage returns the shift that moves round r back onto round 0: -truth.
        np.testing.assert_allclose(found, -truth, atol=0.3)


def test_bead_fiducial_is_sparse_points_and_polydt_record_unchanged(tmp_path):
    # The default record carries no bead keys: experiments simulated before they existed still match.
    assert not {"fiducial_kind", "bead_spacing_px", "bead_photons"} & set(SimulationParams().to_dict())
    beads = SimulationParams(fiducial_kind="beads", bead_spacing_px=20.0)
    assert SimulationParams.from_dict(beads.to_dict()) == beads
    with pytest.raises(InputError, match="fiducial_kind='dots'.*polydt, beads"):
        SimulationParams(fiducial_kind="dots")
    params = dict(seed=2, n_tiles_yx=(1, 1), n_rounds=2, image_shape_zyx=(8, 80, 80), n_genes=2, n_blanks=0,
                  codeword_weight=2, min_hamming_distance=2,
                  fiducial_kind="beads", bead_spacing_px=20.0)
    simulate_experiment(tmp_path, params)
    dark = tifffile.imread(tmp_path / "raw_data" / "camera_dark_frame.tif")
    fiducial = (tifffile.imread(tmp_path / "raw_data" / "tile0000" / "round0000.tif")[0] - dark).max(axis=0)
    # About (80 / 20)^2 = 16 beads: bright isolated peaks on a flat background, not a stain covering cells.
    from skimage.feature import peak_local_max
    peaks = peak_local_max(fiducial.astype(np.float64), min_distance=5, threshold_abs=np.median(fiducial) * 4)
    assert 8 <= len(peaks) <= 25
    assert np.mean(fiducial > np.median(fiducial) * 2) < 0.1


# determinism ------------------------------------------------------------------------------


def test_same_params_give_byte_identical_files(tmp_path):
    params = dict(seed=11, n_tiles_yx=(1, 2), n_rounds=2, image_shape_zyx=(6, 48, 48), n_genes=2, n_blanks=1,
                  n_readout_channels=3)
    a = simulate_experiment(tmp_path / "a", params)["experiment_dir"]
    b = simulate_experiment(tmp_path / "b", SimulationParams.from_dict(params))["experiment_dir"]
    files_a = sorted(str(p.relative_to(a)) for p in Path(a).rglob("*") if p.is_file())
    files_b = sorted(str(p.relative_to(b)) for p in Path(b).rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) > 10
    for name in files_a:
        assert (Path(a) / name).read_bytes() == (Path(b) / name).read_bytes(), name
    # No absolute paths or host names in the text files (binary files hold only numbers and fixed tags).
    for name in files_a:
        if name.endswith((".json", ".csv", ".yaml")):
            text = (Path(a) / name).read_text()
            assert str(tmp_path) not in text
            assert os.uname().nodename not in text or len(os.uname().nodename) < 4
    c = simulate_experiment(tmp_path / "c", dict(params, seed=12))["experiment_dir"]
    assert (Path(a) / "raw_data/tile0000/round0000.tif").read_bytes() != \
        (Path(c) / "raw_data/tile0000/round0000.tif").read_bytes()

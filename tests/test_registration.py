"""merfishflow.image.registration against the simulator's ground truth (transforms.json + deformation TIFFs).

Displacements are compared in the simulator's convention: a point at p in
round 0 is at p + shift_zyx_px[r] + deformation_r(p) in round r.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from merfishflow.errors import InputError
from merfishflow.image.registration import (
    RoundRegistration,
    apply_transform,
    optical_flow_field,
    register_round,
    rigid_shift,
    total_displacement,
    upsample_field,
)
from merfishflow.simulation import simulate_experiment

BASE = {"seed": 5, "n_tiles_yx": [1, 1], "n_rounds": 4, "n_readout_channels": 2, "image_shape_zyx": [16, 96, 96],
        "n_genes": 8, "n_blanks": 2}
BORDER = 3  # voxels excluded at every face when comparing displacements


class Sim:
    """Fiducial images (dark frame subtracted, float32) and true displacements of one simulated tile."""

    def __init__(self, root):
        self.root = root
        self.transforms = json.loads((root / "ground_truth" / "transforms.json").read_text())
        dark = tifffile.imread(root / "raw_data" / "camera_dark_frame.tif")
        self.n_rounds = len(self.transforms["rounds"])
        self.fiducial = [tifffile.imread(root / "raw_data" / "tile0000" / f"round{r:04d}.tif")[0].astype(np.float32)
                         - dark for r in range(self.n_rounds)]
        ref = self.fiducial[0]
        # Where the stain has texture (inside cells), away from the borders.
        mask = ref > np.median(ref)
        inner = np.zeros_like(mask)
        inner[BORDER:-BORDER, BORDER:-BORDER, BORDER:-BORDER] = True
        self.mask = mask & inner

    def shift(self, r):
        return np.array(self.transforms["rounds"][r]["shift_zyx_px"])

    def deformation(self, r):
        path = self.root / "ground_truth" / f"deformation_tile0000_round{r:04d}.tif"
        return tifffile.imread(path).astype(np.float64)

    def true_displacement(self, r):
        return self.deformation(r) + self.shift(r).reshape(3, 1, 1, 1)


@pytest.fixture(scope="module")
def sims(tmp_path_factory):
    out = {}
    for amplitude in (0.0, 0.7, 1.5):
        root = tmp_path_factory.mktemp(f"sim_{amplitude}")
        simulate_experiment(root, dict(BASE, deformation_amplitude_px=amplitude))
        out[amplitude] = Sim(root)
    return out


def rms_vector(diff, mask):
    """RMS length of the 3D displacement error over the masked voxels."""
    return float(np.sqrt(np.mean(np.sum(diff[:, mask] ** 2, axis=0))))


# rigid shift -----------------------------------------------------------------------------------
def test_rigid_shift_recovers_pure_shifts(sims):
    sim = sims[0.0]
    errors = [rigid_shift(sim.fiducial[0], sim.fiducial[r]) - sim.shift(r) for r in range(1, sim.n_rounds)]
    rms = float(np.sqrt(np.mean(np.square(errors))))
    print(f"\npure shifts: rigid_shift RMS error {rms:.3f} px over {len(errors)} rounds x 3 axes")
    assert rms <= 0.25
    # Round 0 against itself: exactly no shift.
    np.testing.assert_array_equal(rigid_shift(sim.fiducial[0], sim.fiducial[0]), np.zeros(3))


def test_rigid_shift_sign_is_minus_phase_cross_correlation(sims):
    from skimage.registration import phase_cross_correlation

    from merfishflow.image.registration import _prepare_for_correlation

    sim = sims[0.0]
    a = _prepare_for_correlation(sim.fiducial[0], 0.3)
    b = _prepare_for_correlation(sim.fiducial[1], 0.3)
    skimage_shift, _, _ = phase_cross_correlation(a, b, upsample_factor=20)
    # merfishflow's PhaseCorrelator is skimage's algorithm on real FFTs: the same shift, to skimage's float32.
    np.testing.assert_allclose(rigid_shift(sim.fiducial[0], sim.fiducial[1]), -skimage_shift, atol=1e-6)
    for r in range(2, sim.n_rounds):
        b = _prepare_for_correlation(sim.fiducial[r], 0.3)
        np.testing.assert_allclose(rigid_shift(sim.fiducial[0], sim.fiducial[r]),
                                   -phase_cross_correlation(a, b, upsample_factor=20)[0], atol=1e-6)
    # ... and has the sign of the simulator's shift_zyx_px (this round moved by > 1 px laterally).
    assert np.max(np.abs(sim.shift(1))) > 1.0
    np.testing.assert_allclose(-skimage_shift, sim.shift(1), atol=0.3)


def test_rigid_shift_with_deformation(sims):
    """With a deformation the best rigid fit of a 10 um tile is shift + the tile's mean deformation.

    The deformation (0.7 px RMS, 4 um correlation length) does not average out
    over a 96 x 96 tile: its mean over the textured voxels is 0.1-0.5 px per
    axis here, so the rigid estimate is compared with shift + that mean
    (a rigid fit cannot tell the two apart). The deviation from shift_zyx_px
    alone is printed for the record.
    """
    sim = sims[0.7]
    errors, raw_errors = [], []
    for r in range(1, sim.n_rounds):
        found = rigid_shift(sim.fiducial[0], sim.fiducial[r])
        mean_deformation = sim.deformation(r)[:, sim.mask].mean(axis=1)
        errors.append(found - (sim.shift(r) + mean_deformation))
        raw_errors.append(found - sim.shift(r))
    rms = float(np.sqrt(np.mean(np.square(errors))))
    raw = float(np.sqrt(np.mean(np.square(raw_errors))))
    print(f"\n0.7 px deformation: rigid_shift RMS error {rms:.3f} px vs shift + mean deformation, "
          f"{raw:.3f} px vs shift_zyx_px alone")
    assert rms <= 0.25


# optical flow ----------------------------------------------------------------------------------
@pytest.mark.parametrize("amplitude", [0.7, 1.5])
def test_optical_flow_reduces_residual_misalignment(sims, amplitude):
    sim = sims[amplitude]
    before, after = [], []
    for r in range(1, sim.n_rounds):
        result = register_round(sim.fiducial[0], sim.fiducial[r], metrics=False)
        truth = sim.true_displacement(r)
        rigid = np.broadcast_to(result.shift_zyx_px.reshape(3, 1, 1, 1), truth.shape)
        before.append(rms_vector(rigid - truth, sim.mask) ** 2)
        after.append(rms_vector(result.displacement(truth.shape[1:]) - truth, sim.mask) ** 2)
    before, after = float(np.sqrt(np.mean(before))), float(np.sqrt(np.mean(after)))
    print(f"\n{amplitude} px deformation: residual RMS {before:.3f} px rigid only, {after:.3f} px with the field")
    assert after <= 0.5
    assert after <= 0.6 * before


@pytest.mark.parametrize("shape", [(16, 32, 32), (40, 48, 40)])   # one pyramid level, and two
def test_lucas_kanade_equals_scikit_image(sims, shape):
    from skimage.registration import optical_flow_ilk

    from merfishflow.image.registration import iterative_lucas_kanade

    sim = sims[1.5]
    crop = tuple(slice(0, n) for n in shape)
    reference = np.pad(sim.fiducial[0], [(0, max(0, n - m)) for n, m in zip(shape, sim.fiducial[0].shape)],
                       mode="reflect")[crop]
    moving = np.pad(sim.fiducial[2], [(0, max(0, n - m)) for n, m in zip(shape, sim.fiducial[2].shape)],
                    mode="reflect")[crop]
    reference, moving = (np.ascontiguousarray(a / a.max(), dtype=np.float32) for a in (reference, moving))
    ours = iterative_lucas_kanade(reference, moving, radius=2, num_warp=3)
    theirs = optical_flow_ilk(reference, moving, radius=2, num_warp=3, gaussian=True, prefilter=False,
                              dtype=np.float32)
    assert ours.shape == theirs.shape and ours.dtype == np.float32
    assert np.abs(theirs).max() > 0.5                      # a real flow to agree on
    assert np.abs(ours - theirs).max() <= 1e-3 * max(1.0, np.abs(theirs).max())


def test_optical_flow_does_not_spoil_a_pure_shift(sims):
    sim = sims[0.0]
    for r in range(1, sim.n_rounds):
        result = register_round(sim.fiducial[0], sim.fiducial[r], metrics=False)
        truth = np.broadcast_to(sim.shift(r).reshape(3, 1, 1, 1), (3,) + sim.fiducial[0].shape)
        assert rms_vector(result.displacement(truth.shape[1:]) - truth, sim.mask) <= 0.3


def test_register_round_improves_correlation_and_fields_shape(sims):
    sim = sims[1.5]
    result = register_round(sim.fiducial[0], sim.fiducial[1])
    assert isinstance(result, RoundRegistration)
    assert result.field.shape == (3, 16, 32, 32) and result.field.dtype == np.float32
    assert result.ncc_before < result.ncc_rigid < result.ncc_after <= 1.0
    # Isotropic 3x downsampling: the field is on a (ceil(Z/3), ceil(Y/3), ceil(X/3)) grid.
    field = optical_flow_field(sim.fiducial[0], sim.fiducial[1], shift_zyx_px=result.shift_zyx_px, downsample=3)
    assert field.shape == (3, 6, 32, 32)
    registered = apply_transform(sim.fiducial[1], result.shift_zyx_px, field, downsample=3)
    assert registered.shape == sim.fiducial[0].shape and registered.dtype == np.float32


# resampling ------------------------------------------------------------------------------------
def _blob(shape, centre, sigma=(1.5, 2.0, 2.0)):
    grids = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    return np.exp(-sum((g - c) ** 2 / (2 * s * s) for g, c, s in zip(grids, centre, sigma)))


def _centroid(image):
    grids = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in image.shape], indexing="ij")
    image = np.asarray(image, dtype=np.float64)
    return np.array([np.sum(g * image) / np.sum(image) for g in grids])


@pytest.mark.parametrize("order", [1, 3])
def test_apply_transform_moves_a_blob_by_the_shift(order):
    shape, centre = (20, 40, 44), np.array([9.3, 20.2, 21.7])
    image = _blob(shape, centre)
    shift = np.array([0.4, -1.35, 2.6])
    # out[p] = image[p + shift]: the blob ends up at centre - shift.
    out = apply_transform(image, shift, order=order)
    assert out.dtype == np.float32 and out.shape == shape
    np.testing.assert_allclose(_centroid(out), centre - shift, atol=0.02)
    # A constant field adds to the shift.
    factors = (1, 3, 3)
    field = np.zeros((3, 20, 14, 15), np.float32)
    field[:] = np.array([0.2, 0.5, -0.75], np.float32).reshape(3, 1, 1, 1)
    out = apply_transform(image, shift, field, downsample=factors, order=order)
    np.testing.assert_allclose(_centroid(out), centre - shift - [0.2, 0.5, -0.75], atol=0.02)


def test_apply_transform_undoes_a_simulated_shift(sims):
    sim = sims[0.0]
    inner = (slice(3, -3), slice(8, -8), slice(8, -8))
    ref = sim.fiducial[0][inner]
    moving = sim.fiducial[2]
    good = apply_transform(moving, sim.shift(2))[inner]
    wrong = apply_transform(moving, -sim.shift(2))[inner]
    assert np.corrcoef(ref.ravel(), good.ravel())[0, 1] > 0.97
    assert np.corrcoef(ref.ravel(), good.ravel())[0, 1] > np.corrcoef(ref.ravel(), wrong.ravel())[0, 1] + 0.05


def test_apply_transform_slabs_do_not_change_the_result():
    rng = np.random.default_rng(0)
    image = rng.random((7, 30, 33)).astype(np.float32)
    field = rng.normal(size=(3, 3, 10, 11)).astype(np.float32)
    for order in (1, 3):
        whole = apply_transform(image, [0.3, -0.2, 1.1], field, downsample=3, order=order, slab_voxels=10**9)
        slabs = apply_transform(image, [0.3, -0.2, 1.1], field, downsample=3, order=order, slab_voxels=100)
        assert whole.tobytes() == slabs.tobytes()


@pytest.mark.parametrize("shape, factors, dtype", [
    ((7, 30, 33), (1, 3, 3), np.float32),     # partial last blocks in y and x
    ((1, 25, 19), (1, 3, 3), np.uint16),      # one plane: one coarse z sample; integer input
    ((9, 12, 40), (3, 12, 5), np.float64),    # one coarse y sample
])
def test_apply_transform_default_equals_map_coordinates(shape, factors, dtype):
    # The default resampling (compiled, field interpolated on the fly) against scipy.ndimage.map_coordinates
    # on the coordinates written out, with shifts and fields that reach far beyond the edges.
    from scipy import ndimage as ndi

    rng = np.random.default_rng(3)
    image = (rng.random(shape) * 1000).astype(dtype)
    coarse = tuple(-(-n // f) for n, f in zip(shape, factors))
    field = rng.normal(scale=4.0, size=(3, *coarse)).astype(np.float32)
    for shift, f in (([0.3, -2.7, 5.2], field), ([-1.6, 30.0, -0.5], None), ([0.0, 0.0, 0.0], field)):
        out = apply_transform(image, shift, f, downsample=factors)
        coords = total_displacement(shift, f, shape, factors) + np.indices(shape, dtype=np.float32)
        expected = ndi.map_coordinates(image.astype(np.float64), coords, order=1, mode="nearest")
        assert out.dtype == np.float32 and out.shape == shape
        np.testing.assert_allclose(out, expected, rtol=2e-5, atol=2e-3)


def test_upsample_field_puts_samples_at_block_centres():
    full_shape, factors = (7, 17, 20), (3, 3, 3)  # not multiples of 3: partial last blocks
    coarse = tuple(-(-n // f) for n, f in zip(full_shape, factors))
    # A field linear in position, sampled at the block centres f j + (f - 1) / 2 ...
    slope = np.array([[0.5, -0.2, 0.1], [0.0, 0.3, 0.05], [-0.1, 0.02, 0.4]])
    centres = np.meshgrid(*[f * np.arange(n) + (f - 1) / 2 for n, f in zip(coarse, factors)], indexing="ij")
    field = np.stack([sum(slope[c, a] * centres[a] for a in range(3)) for c in range(3)]).astype(np.float32)
    up = upsample_field(field, full_shape, downsample=factors)
    assert up.shape == (3,) + full_shape and up.dtype == np.float32
    # ... is reproduced exactly between the outermost centres,
    p = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in full_shape], indexing="ij")
    expected = np.stack([sum(slope[c, a] * p[a] for a in range(3)) for c in range(3)])
    lo = [(f - 1) // 2 + 0 for f in factors]
    hi = [int(np.floor(f * (n - 1) + (f - 1) / 2)) for n, f in zip(coarse, factors)]
    hi = [min(h, n - 1) for h, n in zip(hi, full_shape)]
    window = (slice(None),) + tuple(slice(a, b + 1) for a, b in zip(lo, hi))
    np.testing.assert_allclose(up[window], expected[window], atol=1e-5)
    # ... and held constant outside them (voxel 0 takes the first sample's value).
    np.testing.assert_allclose(up[:, 0, 0, 0], field[:, 0, 0, 0], atol=1e-6)
    # total_displacement adds the shift.
    total = total_displacement([1.0, 2.0, 3.0], field, full_shape, downsample=factors, slab_voxels=50)
    np.testing.assert_allclose(total, up + np.array([1.0, 2.0, 3.0], np.float32).reshape(3, 1, 1, 1), atol=1e-6)


# errors ----------------------------------------------------------------------------------------
def test_blank_fiducial_raises_input_error(sims):
    ref = sims[0.0].fiducial[0]
    for blank in (np.zeros_like(ref), np.full(ref.shape, 100, np.uint16), np.full(ref.shape, 100.0) +
                  1e-9 * np.arange(ref.size).reshape(ref.shape) / ref.size):
        with pytest.raises(InputError, match="blank"):
            rigid_shift(ref, blank)
        with pytest.raises(InputError, match="moving.*blank"):
            register_round(ref, blank)
    with pytest.raises(InputError, match="reference.*blank"):
        optical_flow_field(np.zeros_like(ref), ref)
    with pytest.raises(InputError, match="NaN"):
        rigid_shift(ref, np.full(ref.shape, np.nan, np.float32))


def test_mismatched_or_wrong_shapes_raise_input_error(sims):
    ref = sims[0.0].fiducial[0]
    with pytest.raises(InputError, match="same shape"):
        rigid_shift(ref, ref[:, :-1])
    with pytest.raises(InputError, match="same shape"):
        optical_flow_field(ref, ref[1:])
    with pytest.raises(InputError, match="same shape"):
        register_round(ref, ref[:, :, 2:])
    with pytest.raises(InputError, match="3D"):
        rigid_shift(ref[0], ref[0])
    with pytest.raises(InputError, match="field: expected shape"):
        apply_transform(ref, [0, 0, 0], np.zeros((3, 6, 32, 32), np.float32), downsample=(1, 3, 3))
    with pytest.raises(InputError, match="downsample"):
        upsample_field(np.zeros((3, 2, 2, 2)), (4, 4, 4), downsample=0)
    with pytest.raises(InputError, match="shift_zyx_px"):
        apply_transform(ref, [0, 0])


# determinism -----------------------------------------------------------------------------------
def test_same_inputs_give_identical_bytes(sims):
    sim = sims[0.7]
    a = register_round(sim.fiducial[0], sim.fiducial[3])
    b = register_round(sim.fiducial[0].copy(), sim.fiducial[3].copy())
    assert a.shift_zyx_px.tobytes() == b.shift_zyx_px.tobytes()
    assert a.field.tobytes() == b.field.tobytes()
    assert (a.ncc_before, a.ncc_rigid, a.ncc_after) == (b.ncc_before, b.ncc_rigid, b.ncc_after)
    assert a.apply(sim.fiducial[3], order=3).tobytes() == b.apply(sim.fiducial[3], order=3).tobytes()


def test_rigid_shift_on_a_central_crop_agrees_with_the_whole_tile():
    from scipy import ndimage

    from merfishflow.image.registration import central_crop, register_round

    rng = np.random.default_rng(1)
    # Fine texture: a crop must hold many features for phase correlation (a 48 px crop of
    # texture smoothed over 3 px was biased by 1.5 px; real tiles crop 1024 px of 2048).
    reference = ndimage.gaussian_filter(rng.random((24, 128, 128)).astype(np.float32), 1.0)
    moving = ndimage.shift(reference, (0.4, -1.3, 2.2), order=3, mode="nearest")
    whole = register_round(reference, moving, flow=False, metrics=False)
    cropped = register_round(reference, moving, flow=False, metrics=False, rigid_crop_yx=48)
    assert central_crop((24, 128, 128), 48) == (slice(None), slice(40, 88), slice(40, 88))
    np.testing.assert_allclose(cropped.shift_zyx_px, whole.shift_zyx_px, atol=0.1)
    # moving[p] = reference[p - s]: a point at p in the reference is at p + s.
    np.testing.assert_allclose(cropped.shift_zyx_px, [0.4, -1.3, 2.2], atol=0.2)

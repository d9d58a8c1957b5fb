"""Richardson–Lucy deconvolution: sharpening measured on spots rendered with the simulator's PSF,
tiling against the untiled result, automatic stopping, errors, determinism, the GPU path."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import fftconvolve

from merfishflow.image.deconvolution import (
    RichardsonLucyInfo,
    check_psf_matches,
    default_overlap_yx,
    richardson_lucy,
    richardson_lucy_peak_bytes,
    wiener_butterworth_kernel,
)
from merfishflow.image.deconvolution import _half_maximum_width  # the kernel's own resolution limit
from merfishflow.errors import InputError
from merfishflow.image.psf import gaussian_psf, widefield_psf
from merfishflow.simulation.render import splat

VOXEL_ZYX_UM = (0.31, 0.108, 0.108)
N_ITER = 50


@pytest.fixture(scope="module")
def psf():
    return widefield_psf(VOXEL_ZYX_UM, 0.59, 1.3, 1.4)   # (9, 19, 19)


def render(psf, positions, photons, shape, background, seed):
    """Poisson camera image of point emitters (trilinear splat, PSF blur, flat background)."""
    truth = splat(np.asarray(positions, dtype=float), np.broadcast_to(photons, (len(positions),)), shape)
    expected = np.clip(fftconvolve(truth, psf.astype(np.float64), mode="same"), 0, None) + background
    return np.random.default_rng(seed).poisson(expected).astype(np.uint16)


@pytest.fixture(scope="module")
def spots(psf):
    """Nine isolated in-focus spots (4000-ish photons, 20 e- background), 24 px apart, sub-pixel in y/x."""
    rng = np.random.default_rng(1)
    shape = (16, 96, 96)
    positions = np.array([(8.0, cy + rng.uniform(-0.5, 0.5), cx + rng.uniform(-0.5, 0.5))
                          for cy in (24, 48, 72) for cx in (24, 48, 72)])
    return render(psf, positions, 8000.0, shape, 20.0, seed=2), positions


@pytest.fixture(scope="module")
def crowded(psf):
    """12 x 200 x 200: 300 random spots on a smoothly varying background (the tiling test image)."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(2)
    shape = (12, 200, 200)
    positions = rng.uniform(0, np.array(shape) - 1, size=(300, 3))
    truth = splat(positions, rng.lognormal(np.log(4000), 0.3, 300), shape)
    background = 20 * np.exp(8 * ndi.gaussian_filter(rng.normal(size=shape), (1, 8, 8)))
    expected = np.clip(fftconvolve(truth, psf.astype(np.float64), mode="same"), 0, None) + background
    return rng.poisson(expected).astype(np.uint16)


# measurements ----------------------------------------------------------------------------------
def line_fwhm(profile):
    """FWHM (voxels) of a background-subtracted line profile, half-maximum crossings interpolated linearly."""
    p = np.asarray(profile, dtype=np.float64)
    i = int(np.argmax(p))
    half = p[i] / 2
    left = i
    while left > 0 and p[left - 1] > half:
        left -= 1
    right = i
    while right < len(p) - 1 and p[right + 1] > half:
        right += 1
    assert 0 < left and right < len(p) - 1, "profile does not fall to half maximum"
    x_left = left - 1 + (half - p[left - 1]) / (p[left] - p[left - 1])
    x_right = right + (p[right] - half) / (p[right] - p[right + 1])
    return x_right - x_left


def lateral_fwhms(image, positions):
    """Mean of the y and x FWHM through each spot's brightest voxel (background: the image median)."""
    image = np.asarray(image, dtype=np.float64)
    background = np.median(image)
    out = []
    for z, y, x in np.round(positions).astype(int):
        window = image[z - 1:z + 2, y - 2:y + 3, x - 2:x + 3]
        dz, dy, dx = np.unravel_index(np.argmax(window), window.shape)
        z, y, x = z - 1 + dz, y - 2 + dy, x - 2 + dx
        out.append((line_fwhm(image[z, y, x - 7:x + 8] - background)
                    + line_fwhm(image[z, y - 7:y + 8, x] - background)) / 2)
    return np.array(out)


# sharpening ------------------------------------------------------------------------------------
def test_point_source_is_concentrated_on_the_right_voxel(psf):
    shape, point = (16, 48, 48), (8, 24, 23)
    image = render(psf, [point], 50000.0, shape, 2.0, seed=0)
    out = richardson_lucy(image, psf, N_ITER)

    def concentration(a):
        # Fraction of the spot's light (background-subtracted, within the PSF support around the
        # point) that lies within +-1 voxel of the point; background = median outside the support.
        a = np.asarray(a, dtype=np.float64)
        near = tuple(slice(c - 1, c + 2) for c in point)
        support = tuple(slice(c - n // 2, c + n // 2 + 1) for c, n in zip(point, psf.shape))
        outside = np.ones(shape, dtype=bool)
        outside[support] = False
        background = np.median(a[outside])
        return (a[near].sum() - 27 * background) / (a[support].sum() - a[support].size * background)

    before, after = concentration(image), concentration(out)
    assert np.unravel_index(np.argmax(out), shape) == point
    # Measured: 0.19 -> 0.91 (4.7x) with 50 iterations.
    assert after >= 3.0 * before, (before, after)


def test_fwhm_of_isolated_spots_shrinks_by_a_quarter(psf, spots):
    image, positions = spots
    before = lateral_fwhms(image, positions)
    after = lateral_fwhms(richardson_lucy(image, psf, N_ITER), positions)
    shrink = 1 - after.mean() / before.mean()
    # Measured: mean FWHM 2.62 -> 1.73 voxels (34 % smaller; 24-43 % per spot) with 50 iterations
    # (30 iterations: 27 %).
    assert shrink >= 0.25, (before, after)
    assert np.all(after < before), (before, after)


def test_output_is_nonnegative_float32_same_shape(psf, spots):
    image, _ = spots
    out = richardson_lucy(image[:, :50, :70], psf, 5)
    assert out.dtype == np.float32 and out.shape == (16, 50, 70)
    assert np.all(out >= 0) and np.all(np.isfinite(out))
    # Flux is kept up to the image borders' share (reflect padding gives some light to the padding).
    assert abs(out.sum(dtype=np.float64) / image[:, :50, :70].sum(dtype=np.float64) - 1) < 0.05


def test_all_zero_image_gives_zeros(psf):
    out = richardson_lucy(np.zeros((10, 30, 30), np.uint16), psf, 3)
    assert out.dtype == np.float32 and not out.any()


# acceleration ----------------------------------------------------------------------------------
def test_accelerated_starts_as_plain_richardson_lucy(psf, spots):
    image, _ = spots
    # No extrapolation before two steps exist: the first two iterations are plain Richardson-Lucy.
    plain = richardson_lucy(image, psf, 2)
    assert np.array_equal(richardson_lucy(image, psf, 2, acceleration="biggs_andrews"), plain)


def test_accelerated_sharpens_in_half_the_iterations(psf, spots):
    image, positions = spots
    before = lateral_fwhms(image, positions).mean()
    plain = 1 - lateral_fwhms(richardson_lucy(image, psf, 2 * 15), positions).mean() / before
    out = richardson_lucy(image, psf, 15, acceleration="biggs_andrews")
    fast = 1 - lateral_fwhms(out, positions).mean() / before
    # Measured: 15 accelerated iterations shrink the FWHM by 25.6 %, 30 plain ones by 27.4 %,
    # 15 plain ones by 14 %.
    assert fast >= 0.9 * plain, (fast, plain)
    assert np.all(out >= 0) and abs(out.sum(dtype=np.float64) / image.sum(dtype=np.float64) - 1) < 0.02


# Wiener–Butterworth back projector ------------------------------------------------------------
WB = {"back_projector": "wiener_butterworth"}


def back_projector_transfer(psf):
    """Transfer functions of the correlation with ``psf`` (unit peak) and of its Wiener–Butterworth kernel."""
    flipped = psf[::-1, ::-1, ::-1].astype(np.float64)
    matched = np.fft.fftn(np.fft.ifftshift(flipped / flipped.sum()))
    return matched, np.fft.fftn(np.fft.ifftshift(wiener_butterworth_kernel(psf).astype(np.float64)))


@pytest.mark.parametrize("na", [1.3, 1.0])
def test_wiener_butterworth_kernel_never_amplifies_past_the_data(na):
    psf = widefield_psf(VOXEL_ZYX_UM, 0.59, na, 1.4)
    kernel = wiener_butterworth_kernel(psf)
    assert kernel.shape == psf.shape and kernel.dtype == np.float32
    assert abs(kernel.sum(dtype=np.float64) - 1) < 1e-5 and np.array_equal(kernel, kernel[::-1])
    matched, back = back_projector_transfer(psf)
    # One update near the solution scales each frequency by (back projector x OTF): at most 1 (plus the
    # Wiener constant), so no frequency, in the missing cone or elsewhere, is pushed past the data.
    assert np.abs(back * np.conj(matched)).max() <= 1 + 1e-2
    # Below the resolution limit it lifts the lateral frequencies the matched projector damps: at the
    # in-focus frequency of half the cut-off (1 / FWHM) the gain is at least twice the matched one.
    centre = [n // 2 for n in psf.shape]
    half_cutoff = round(psf.shape[2] / _half_maximum_width(psf[centre[0], centre[1], :]) / 2)
    assert abs(back[0, 0, half_cutoff]) >= 2 * abs(matched[0, 0, half_cutoff])


@pytest.mark.parametrize("make_psf", [
    lambda: widefield_psf(VOXEL_ZYX_UM, 0.59, 1.3, 1.4),
    lambda: widefield_psf(VOXEL_ZYX_UM, 0.59, 1.0, 1.4),
    lambda: gaussian_psf(VOXEL_ZYX_UM, (0.4, 0.12, 0.12)),
], ids=["widefield-na1.3", "widefield-na1.0", "gaussian"])
def test_wiener_butterworth_sharpens_in_four_iterations_as_matched_in_twenty(make_psf):
    psf = make_psf()
    rng = np.random.default_rng(1)
    positions = np.array([(8.0, cy + rng.uniform(-0.5, 0.5), cx + rng.uniform(-0.5, 0.5))
                          for cy in (24, 48, 72) for cx in (24, 48, 72)])
    image = render(psf, positions, 8000.0, (16, 96, 96), 20.0, seed=2)
    before = lateral_fwhms(image, positions).mean()
    accelerated = richardson_lucy(image, psf, 20, acceleration="biggs_andrews")
    matched = 1 - lateral_fwhms(accelerated, positions).mean() / before
    out = richardson_lucy(image, psf, 4, **WB)
    unmatched = 1 - lateral_fwhms(out, positions).mean() / before
    # Measured: 4 Wiener-Butterworth iterations shrink the FWHM by 41 / 38 / 37 %, 20 accelerated matched
    # ones by 32 / 24 / 44 % (NA 1.3, NA 1.0, Gaussian); the Gaussian's matched result is sharper.
    assert unmatched >= 0.8 * matched, (unmatched, matched)
    # Unlike the matched update, this one does not keep the flux exactly: the sharpened background noise
    # is clipped at 0, which adds 17-20 % here at NA 1.3 and 6-10 % at NA 1.0. It must never lose flux.
    assert np.all(out >= 0) and 0.98 < out.sum(dtype=np.float64) / image.sum(dtype=np.float64) < 1.25


def test_wiener_butterworth_first_iteration_does_not_blur(psf, spots):
    # Guo et al.'s pointwise Wiener filter divides by the widefield PSF's missing cone and made the first
    # iteration widen these spots by 28-82 %; dividing by each lateral frequency's peak must not.
    image, positions = spots
    before = lateral_fwhms(image, positions).mean()
    assert lateral_fwhms(richardson_lucy(image, psf, 1, **WB), positions).mean() < 1.05 * before


def test_wiener_butterworth_tiles_and_runs_on_thin_stacks(psf, crowded):
    ref = richardson_lucy(crowded, psf, 3, **WB)
    tiled = richardson_lucy(crowded, psf, 3, tile_yx=96, overlap_yx=24, **WB)
    assert np.abs(tiled - ref).max() <= 5e-3 * ref.max()
    for planes in (1, 3):
        thin = crowded[:planes]
        out, info = richardson_lucy(thin, psf, 3, return_info=True, **WB)
        assert out.shape == thin.shape and np.all(np.isfinite(out)) and np.all(out >= 0)
        assert info.max_iterations == 3 and out.sum(dtype=np.float64) >= 0.98 * thin.sum(dtype=np.float64)


@pytest.mark.parametrize("kwargs, message", [
    ({"alpha": 0}, "alpha=0"),
    ({"beta": 1.0}, "beta=1.0"),
    ({"order": 0}, "order=0"),
])
def test_wiener_butterworth_kernel_rejects_bad_parameters(psf, kwargs, message):
    with pytest.raises(InputError, match=message):
        wiener_butterworth_kernel(psf, **kwargs)


def test_accelerated_stops_and_is_deterministic(psf, crowded):
    tol = 1e-2
    out, info = richardson_lucy(crowded, psf, 200, acceleration="biggs_andrews", stop_tolerance=tol,
                                tile_yx=96, return_info=True)
    assert 2 < info.max_iterations < 200 and np.all(info.final_change < tol)
    again = richardson_lucy(crowded, psf, 200, acceleration="biggs_andrews", stop_tolerance=tol, tile_yx=96)
    assert out.tobytes() == again.tobytes()


def test_accelerated_peak_memory_counts_two_more_blocks():
    plain = richardson_lucy_peak_bytes((20, 512, 512), (11, 21, 21), tile_yx=256)
    fast = richardson_lucy_peak_bytes((20, 512, 512), (11, 21, 21), tile_yx=256, acceleration="biggs_andrews")
    assert fast > plain


# tiling ----------------------------------------------------------------------------------------
def test_tiled_matches_untiled(psf, crowded):
    ref = richardson_lucy(crowded, psf, N_ITER)
    tiled, info = richardson_lucy(crowded, psf, N_ITER, tile_yx=96, overlap_yx=24, return_info=True)
    assert info.iterations.shape == (3, 3) and np.all(info.iterations == N_ITER)
    diff = np.abs(tiled - ref)
    # Measured 0.11 % of the maximum overall (at the image border, where the padded blocks' wrap-around
    # differs) and 0.013 % more than 10 voxels from the border (no seams at the block boundaries).
    assert diff.max() <= 5e-3 * ref.max()
    assert diff[:, 10:-10, 10:-10].max() <= 1e-3 * ref.max()


def test_single_tile_is_identical_to_untiled(psf, spots):
    image, _ = spots
    ref = richardson_lucy(image, psf, 4)
    assert np.array_equal(richardson_lucy(image, psf, 4, tile_yx=(128, 100)), ref)


def test_default_overlap_and_peak_memory_estimate(psf):
    assert default_overlap_yx(psf.shape) == (18, 18)
    big = richardson_lucy_peak_bytes((100, 2048, 2048), (11, 21, 21), tile_yx=512)
    small = richardson_lucy_peak_bytes((100, 2048, 2048), (11, 21, 21), tile_yx=256)
    untiled = richardson_lucy_peak_bytes((100, 2048, 2048), (11, 21, 21))
    io = 100 * 2048 * 2048 * (2 + 4)
    assert io < small < big <= 6e9 < untiled


def test_progress_reports_every_block(psf, crowded):
    messages = []
    richardson_lucy(crowded[:, :100, :150], psf, 1, tile_yx=(50, 50), overlap_yx=16, progress=messages.append)
    assert len(messages) == 2 * 3 and messages[-1].startswith("richardson_lucy: block 6/6")


# stopping --------------------------------------------------------------------------------------
def test_automatic_stopping(psf, spots):
    image, _ = spots
    tol = 1e-2   # measured: stops after 34 iterations
    out, info = richardson_lucy(image, psf, 200, stop_tolerance=tol, return_info=True)
    assert isinstance(info, RichardsonLucyInfo)
    k = info.max_iterations
    assert 1 < k < 200 and info.final_change[0, 0] < tol
    # It stopped at the first iteration below the tolerance: one fewer was still above it.
    _, before = richardson_lucy(image, psf, k - 1, stop_tolerance=tol, return_info=True)
    assert before.max_iterations == k - 1 and before.final_change[0, 0] >= tol
    # Same estimate as a fixed run of k iterations (up to the update's round-off).
    fixed = richardson_lucy(image, psf, k)
    assert np.abs(out - fixed).max() <= 1e-4 * fixed.max()


# the mirror z boundary --------------------------------------------------------------------------
def reference_rl_mirror_z(image, profile, n_iter):
    """Plain Richardson-Lucy with a z-only PSF and the mirror boundary (about the outer planes), by direct convolution."""
    from scipy import ndimage as ndi

    data = image.astype(np.float64)
    h = profile / profile.sum()
    est = np.full(data.shape, data.mean())
    for _ in range(n_iter):
        # ndimage's "mirror" reflects about the outer sample (d c b | a b c d); h is even, so the
        # correlation and the convolution are the same filter.
        blurred = ndi.correlate1d(est, h, axis=0, mode="mirror")
        est = est * ndi.correlate1d(data / np.maximum(blurred, 1e-6 * data.mean()), h, axis=0, mode="mirror")
    return est


@pytest.mark.parametrize("depth", [5, 31])
def test_mirror_z_is_richardson_lucy_with_a_mirrored_stack(spots, depth):
    # A z-only PSF isolates the z boundary; depth 31 is deeper than twice the stack (16 planes): the
    # cosine transform folds it exactly, where padding would need a bigger image.
    image = spots[0][:, :24, :20]
    profile = np.exp(-0.5 * ((np.arange(depth) - depth // 2) / 2.5) ** 2)
    out, info = richardson_lucy(image, profile[:, None, None], 6, return_info=True)
    ref = reference_rl_mirror_z(image, profile, 6)
    assert info.z_boundary == "mirror" and info.fft_shape_zyx[0] == image.shape[0]
    assert np.abs(out - ref).max() <= 1e-4 * ref.max()


@pytest.mark.parametrize("planes", [1, 2])
def test_mirror_z_on_a_thin_stack_folds_the_whole_psf(psf, spots, planes):
    # Mirrored about its outer planes, a stack of one or two planes is constant or 2-periodic in z:
    # the PSF's depth folds onto those planes (one plane: the z-summed PSF), with no padding needed.
    image = spots[0][8 - planes // 2:8 - planes // 2 + planes, :40, :40]
    out, info = richardson_lucy(image, psf, 5, return_info=True)
    assert info.z_boundary == "mirror" and info.fft_shape_zyx[0] == planes
    if planes == 1:
        folded = psf.sum(axis=0, keepdims=True)
    else:   # z offsets -4..4 land on plane |m| mod 2 of the 2-periodic mirror extension
        offsets = np.abs(np.arange(psf.shape[0]) - psf.shape[0] // 2) % 2
        folded = np.stack([psf[offsets == 0].sum(axis=0), psf[offsets == 1].sum(axis=0) / 2])
        folded = np.concatenate([folded[1:], folded])   # (3, y, x): offsets -1, 0, +1
    ref = richardson_lucy(image, folded, 5, z_boundary="pad")
    assert np.abs(out - ref).max() <= 1e-3 * ref.max()


def test_z_boundary_auto_follows_the_psf(psf, spots):
    image = spots[0][:, :40, :40]
    _, info = richardson_lucy(image, psf, 2, return_info=True)
    assert info.z_boundary == "mirror"
    skewed = psf * np.linspace(0.8, 1.2, psf.shape[0], dtype=np.float32)[:, None, None]   # a measured-like tilt
    _, info = richardson_lucy(image, skewed, 2, return_info=True)
    assert info.z_boundary == "pad" and info.fft_shape_zyx[0] > image.shape[0]


def test_mirror_and_padded_z_agree_inside_the_stack(psf, spots):
    image, positions = spots
    mirror = richardson_lucy(image, psf, 20, acceleration="biggs_andrews")
    padded = richardson_lucy(image, psf, 20, acceleration="biggs_andrews", z_boundary="pad")
    inner = slice(psf.shape[0] // 2, image.shape[0] - psf.shape[0] // 2)
    # Measured: at most 2.3 % of the peak (at the spots' plane: the two boundaries differ by a
    # half-plane shift of the mirror, and the PSF's tails carry that across the 16 planes); mean
    # lateral FWHM 1.782 vs 1.775 voxels (2.618 before).
    assert np.abs(mirror - padded)[inner].max() <= 0.03 * padded.max()
    assert abs(lateral_fwhms(mirror, positions).mean() - lateral_fwhms(padded, positions).mean()) < 0.05


# errors ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "message"), [
    ({"psf": np.ones((9, 18, 19))}, "odd size"),
    ({"psf": np.ones((19, 19))}, "3D"),
    ({"psf": -np.ones((3, 3, 3))}, "non-negative"),
    ({"psf": np.ones((41, 5, 5)), "z_boundary": "pad"}, "too large for the image"),
    ({"psf": np.ones((3, 65, 5))}, "too large for the image"),
    ({"z_boundary": "wrap"}, "z_boundary"),
    ({"psf": np.arange(1, 28, dtype=float).reshape(3, 3, 3), "z_boundary": "mirror"}, "even in z"),
    ({"image": -np.ones((10, 32, 32))}, "non-negative"),
    ({"image": np.full((10, 32, 32), np.nan)}, "NaN"),
    ({"image": np.ones((32, 32))}, "3D"),
    ({"n_iter": 0}, "n_iter=0"),
    ({"n_iter": 2.5}, "n_iter=2.5"),
    ({"stop_tolerance": 0}, "stop_tolerance"),
    ({"tile_yx": 16, "overlap_yx": 24}, "tile_yx"),
    ({"tile_yx": 0}, "tile_yx"),
    ({"pad_mode": "wrap"}, "pad_mode"),
    ({"acceleration": "anderson"}, "acceleration"),
    ({"back_projector": "wiener"}, "back_projector='wiener'"),
    ({"xp": "torch"}, "xp"),
])
def test_bad_input_raises_input_error(psf, kwargs, message):
    args = {"image": np.ones((10, 32, 32), np.uint16), "psf": psf[:, 6:13, 6:13], "n_iter": 2}
    args.update(kwargs)
    with pytest.raises(InputError, match=message):
        richardson_lucy(args.pop("image"), args.pop("psf"), **args)


def test_check_psf_matches():
    check_psf_matches((0.31, 0.108, 0.108), [0.31, 0.108, 0.108])
    with pytest.raises(InputError, match=r"\[0.3, 0.108, 0.108\].*\[0.31, 0.108, 0.108\]"):
        check_psf_matches((0.3, 0.108, 0.108), (0.31, 0.108, 0.108))
    with pytest.raises(InputError, match="3 positive numbers"):
        check_psf_matches((0.31, 0.108), (0.31, 0.108, 0.108))


# determinism and backends ----------------------------------------------------------------------
@pytest.mark.parametrize("mirror_z", [False, True])
def test_first_iteration_skips_blurring_the_flat_start(psf, crowded, mirror_z):
    from merfishflow.image.deconvolution import _NumpyBackend, _otf, _plan, _rl_factor

    data = crowded[:, :80, :90].astype(np.float32)
    fft_shape = _plan(data.shape, psf.shape, None, None, mirror_z)[3]
    block = np.zeros(fft_shape, np.float32)
    block[tuple(slice(0, n) for n in data.shape)] = data + 1
    backend = _NumpyBackend(1, mirror_z=mirror_z)
    otfs = _otf(psf / psf.sum(dtype=np.float64), fft_shape, backend)
    flat = np.float32(block.mean())
    full = _rl_factor(np.full(fft_shape, flat, np.float32), block, otfs, np.float32(1e-6), backend)
    short = _rl_factor(np.full(fft_shape, flat, np.float32), block, otfs, np.float32(1e-6), backend, flat=flat)
    assert np.abs(short - full).max() <= 1e-5 * np.abs(full).max()


def test_deterministic(psf, crowded):
    a = richardson_lucy(crowded, psf, 3, tile_yx=96, stop_tolerance=1e-9)
    b = richardson_lucy(crowded, psf, 3, tile_yx=96, stop_tolerance=1e-9)
    assert a.tobytes() == b.tobytes()


def test_auto_backend_without_gpu_is_cpu(psf, spots):
    from merfishflow.image.deconvolution import _gpu_cupy

    if _gpu_cupy() is not None:
        pytest.skip("a GPU is available: 'auto' picks cupy (covered by test_gpu_matches_cpu)")
    image, _ = spots
    out, info = richardson_lucy(image, psf, 2, xp="auto", return_info=True)
    assert info.backend == "numpy" and np.array_equal(out, richardson_lucy(image, psf, 2))


@pytest.mark.parametrize("planes", [1, 2, 9])
def test_gpu_mirror_transform_equals_scipy_dct(planes):
    # The cupy backend builds its type-I DCT from a real FFT; run that code with numpy standing in
    # for cupy so the GPU path's arithmetic is checked on every machine.
    from merfishflow.image.deconvolution import _CupyBackend, _NumpyBackend

    block = np.random.default_rng(3).random((planes, 12, 10)).astype(np.float32)
    gpu_like, cpu = _CupyBackend(np, mirror_z=True), _NumpyBackend(1, mirror_z=True)
    spectrum = cpu.forward(block)
    assert np.allclose(gpu_like.forward(block), spectrum, rtol=1e-4, atol=1e-4)
    assert np.allclose(gpu_like.inverse(spectrum, block.shape), block, atol=1e-5)
    assert np.allclose(cpu.inverse(spectrum.copy(), block.shape), block, atol=1e-5)


@pytest.mark.parametrize("acceleration, back_projector", [
    (None, "matched"), ("biggs_andrews", "matched"), (None, "wiener_butterworth")])
def test_gpu_matches_cpu(psf, crowded, acceleration, back_projector):
    from merfishflow.image.deconvolution import _gpu_cupy

    cupy = _gpu_cupy()
    if cupy is None:
        pytest.skip("cupy is not installed or sees no CUDA device")
    options = {"tile_yx": 96, "overlap_yx": 24, "acceleration": acceleration, "back_projector": back_projector}
    cpu = richardson_lucy(crowded, psf, N_ITER, **options)
    gpu, info = richardson_lucy(crowded, psf, N_ITER, xp=cupy, return_info=True, **options)
    assert info.backend == "cupy" and gpu.dtype == np.float32 and isinstance(gpu, np.ndarray)
    # Different FFT libraries (pocketfft vs cuFFT) in float32: agreement to round-off, not bytes.
    assert np.abs(gpu - cpu).max() <= 1e-3 * cpu.max()

"""Point spread function model shared by the simulator and deconvolution.

The PSF is the vectorial model of Aguet et al. (2009) as implemented by
psfmodels, which accounts for the refractive-index mismatch between immersion
medium and sample; both the simulator and the pipeline call :func:`widefield_psf`
so that deconvolution uses exactly the model the data was rendered with.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError


def psf_shape_zyx(voxel_size_zyx_um, emission_um, numerical_aperture, *, n_fwhm=4.0):
    """Odd PSF support (z, y, x) covering about ``n_fwhm`` FWHMs in each axis.

    Parameters
    ----------
    voxel_size_zyx_um : sequence of 3 float
        Voxel size in µm.
    emission_um : float
        Emission wavelength in µm.
    numerical_aperture : float
        Objective NA.
    n_fwhm : float
        Support as a multiple of the diffraction-limited FWHM.

    Returns
    -------
    tuple of 3 int
        Odd sizes, at least 3 in every axis.
    """
    dz, dy, _ = (float(v) for v in voxel_size_zyx_um)
    lateral_fwhm = 0.51 * emission_um / numerical_aperture
    axial_fwhm = 1.77 * emission_um / numerical_aperture**2
    nz = max(3, int(np.ceil(n_fwhm * axial_fwhm / dz)) | 1)
    nxy = max(3, int(np.ceil(n_fwhm * 2 * lateral_fwhm / dy)) | 1)
    return nz, nxy, nxy


def psf_shape_for_stack(psf_shape, n_planes):
    """The PSF support a stack of ``n_planes`` z-planes can use: at most ``2 * n_planes - 1`` planes in z.

    Deconvolution pads z by reflecting the stack, which supplies ``n_planes - 1``
    planes on each side, so a taller PSF has nothing to act on. The support
    stays centred on focus: a single plane (a 2D image) gets the in-focus
    slice of the 3D PSF, a thin stack its central planes. :func:`widefield_psf`
    normalises whatever support it is given to unit sum, so the light a cropped
    PSF no longer spreads out of the stack is not lost from the estimate.

    Parameters
    ----------
    psf_shape : tuple of 3 odd int
    n_planes : int
        The image's number of z-planes.

    Returns
    -------
    tuple of 3 int
    """
    nz, ny, nx = (int(n) for n in psf_shape)
    return min(nz, 2 * int(n_planes) - 1), ny, nx


def crop_psf_to_stack(psf, n_planes):
    """The central :func:`psf_shape_for_stack` planes of ``psf``, renormalised to unit sum.

    Parameters
    ----------
    psf : ndarray, shape (z, y, x), odd z
    n_planes : int

    Returns
    -------
    ndarray of float32
    """
    psf = np.asarray(psf, dtype=np.float64)
    nz = psf_shape_for_stack(psf.shape, n_planes)[0]
    start = (psf.shape[0] - nz) // 2
    cropped = psf[start:start + nz]
    return (cropped / cropped.sum()).astype(np.float32)


def widefield_psf(
    voxel_size_zyx_um,
    emission_um,
    numerical_aperture,
    immersion_ri,
    sample_ri=None,
    shape_zyx=None,
):
    """Widefield PSF on the camera's voxel grid, normalized to unit sum.

    Parameters
    ----------
    voxel_size_zyx_um : sequence of 3 float
        (dz, dy, dx) in µm; dy must equal dx.
    emission_um : float
        Emission wavelength in µm.
    numerical_aperture : float
        Objective NA; must be below the immersion refractive index.
    immersion_ri : float
        Immersion medium refractive index (design and actual).
    sample_ri : float, optional
        Sample refractive index; defaults to ``immersion_ri``.
    shape_zyx : tuple of 3 odd int, optional
        PSF support; defaults to :func:`psf_shape_zyx`.

    Returns
    -------
    ndarray of float32, shape ``shape_zyx``
        The PSF, centred, non-negative, summing to 1.
    """
    import psfmodels

    dz, dy, dx = (float(v) for v in voxel_size_zyx_um)
    if not np.isclose(dy, dx):
        raise InputError(f"voxel_size_zyx_um: y and x pixel sizes must be equal for the PSF model, got {dy} and {dx}")
    if not 0 < numerical_aperture < immersion_ri:
        raise InputError(
            f"microscope.numerical_aperture={numerical_aperture} must be positive and below "
            f"immersion_refractive_index={immersion_ri}"
        )
    sample_ri = immersion_ri if sample_ri is None else sample_ri
    if shape_zyx is None:
        shape_zyx = psf_shape_zyx(voxel_size_zyx_um, emission_um, numerical_aperture)
    nz, ny, nx = shape_zyx
    if nz % 2 == 0 or ny % 2 == 0 or ny != nx:
        raise InputError(f"PSF shape must be odd in every axis with ny == nx, got {shape_zyx}")
    psf = psfmodels.vectorial_psf_centered(
        nz=nz,
        dz=dz,
        nx=nx,
        dxy=dx,
        wvl=float(emission_um),
        params={"NA": float(numerical_aperture), "ni": float(immersion_ri), "ni0": float(immersion_ri), "ns": float(sample_ri)},
    )
    psf = np.clip(np.asarray(psf, dtype=np.float64), 0, None)
    return (psf / psf.sum()).astype(np.float32)


def gaussian_psf(voxel_size_zyx_um, sigma_zyx_um, *, n_sigma=4.0):
    """A separable 3D Gaussian PSF, unit sum, on an odd support of about ±``n_sigma`` sigmas.

    A stand-in for a measured bead PSF that is tighter than the widefield
    model (e.g. a confocal or light-sheet system); the simulator renders with
    it and writes it as the experiment's measured PSF.

    Parameters
    ----------
    voxel_size_zyx_um, sigma_zyx_um : sequence of 3 float
        Voxel size and the Gaussian's standard deviation per axis, µm.
    n_sigma : float
        Half-width of the support in sigmas.

    Returns
    -------
    ndarray of float32, shape (nz, ny, nx), all odd
    """
    voxel = np.asarray(voxel_size_zyx_um, dtype=np.float64)
    sigma_px = np.asarray(sigma_zyx_um, dtype=np.float64) / voxel
    if np.any(~np.isfinite(sigma_px)) or np.any(sigma_px <= 0):
        raise InputError(f"gaussian_psf: sigma_zyx_um={list(sigma_zyx_um)}: expected 3 positive numbers")
    profiles = []
    for s in sigma_px:
        half = max(1, int(np.ceil(n_sigma * s)))
        x = np.arange(-half, half + 1, dtype=np.float64)
        profiles.append(np.exp(-0.5 * (x / s) ** 2))
    psf = profiles[0][:, None, None] * profiles[1][None, :, None] * profiles[2][None, None, :]
    return (psf / psf.sum()).astype(np.float32)

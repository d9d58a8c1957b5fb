"""The init stage: experiment metadata and optics into ``calibrations.zarr``.

``calibrations.zarr/.zattrs`` carries the codebook, the round/bit order, the
channels and the microscope and camera metadata; its arrays are

- ``camera_noise_map``: float32 (3, Y, X), planes ``offset_adu`` (the dark
  frame, or the scalar offset everywhere), ``e_per_adu`` and
  ``known_hot_pixel`` (1 where ``camera.hot_pixel_map`` marks a pixel);
- ``psf_data``: float32 (channels, z, y, x), the PSF of every channel, unit
  sum, on one common odd support: the measured PSF that experiment.yaml names
  for the channel (``channels[i].psf``), else the widefield model
  (:func:`merfishflow.image.psf.widefield_psf`) on a support fitted to the
  longest emission wavelength.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ..io import datastore
from ..io.fileio import canonical_json
from ..errors import InputError
from ..io.metadata import Experiment, load_experiment, read_camera_image, read_measured_psf
from ..io.paths import CAMERA_NOISE_MAP, PSF_DATA, ExperimentPaths
from ..image.psf import crop_psf_to_stack, psf_shape_zyx, widefield_psf

NOISE_MAP_PLANES = ["offset_adu", "e_per_adu", "known_hot_pixel"]


def camera_noise_map(experiment: Experiment, paths: ExperimentPaths) -> np.ndarray:
    """The (3, Y, X) float32 camera map described in the module docstring."""
    shape_yx = experiment.image_shape_zyx[1:]
    noise = np.empty((3,) + tuple(shape_yx), dtype=np.float32)
    if experiment.dark_frame is not None:
        noise[0] = read_camera_image(paths.raw_file(experiment.dark_frame, "camera.dark_frame"), "dark_frame", shape_yx)
    else:
        noise[0] = experiment.offset_adu
    noise[1] = experiment.e_per_adu
    if experiment.hot_pixel_map is not None:
        known = read_camera_image(paths.raw_file(experiment.hot_pixel_map, "camera.hot_pixel_map"), "hot_pixel_map",
                                   shape_yx)
        noise[2] = (known != 0).astype(np.float32)
    else:
        noise[2] = 0
    return noise


def psf_stack(experiment: Experiment, paths: ExperimentPaths | None = None) -> np.ndarray:
    """PSFs of every channel, (channels, z, y, x) float32, on one common support.

    A channel with a measured PSF (``channels[i].psf`` in experiment.yaml,
    read from ``paths.raw``) uses it, normalised to unit sum; the others use
    the widefield model. The support is the largest of all, each PSF
    zero-padded about its centre, then cropped to what the stack supports
    (:func:`~merfishflow.image.psf.crop_psf_to_stack`: the in-focus plane for a
    single-plane experiment).
    """
    longest = max(c.emission_um for c in experiment.channels)
    shape = psf_shape_zyx(experiment.voxel_size_zyx_um, longest, experiment.numerical_aperture)
    psfs = []
    for i, c in enumerate(experiment.channels):
        if c.psf is not None:
            psfs.append(read_measured_psf(paths.raw / c.psf, f"{paths.experiment_yaml}: channels[{i}].psf"))
        else:
            psfs.append(widefield_psf(experiment.voxel_size_zyx_um, c.emission_um, experiment.numerical_aperture,
                                      experiment.immersion_refractive_index, experiment.sample_refractive_index,
                                      shape_zyx=shape))
    support = np.max([psf.shape for psf in psfs], axis=0)
    padded = [np.pad(psf, [((n - m) // 2,) * 2 for n, m in zip(support, psf.shape)]) for psf in psfs]
    return np.stack([crop_psf_to_stack(psf, experiment.image_shape_zyx[0]) for psf in padded]).astype(np.float32)


def calibration_attrs(experiment: Experiment) -> dict:
    """The metadata part of ``calibrations.zarr/.zattrs`` (plain JSON)."""
    return {
        "exp_codebook": {
            "gene_id": list(experiment.gene_ids),
            "codewords": [list(w) for w in experiment.codewords],
            "bits": experiment.bits,
        },
        "exp_order": {"columns": [experiment.channels[c].name for c in experiment.readout_channels],
                      "rounds": [list(row) for row in experiment.exp_order]},
        "channels": [
            {"name": c.name, "role": c.role, "excitation_um": c.excitation_um, "emission_um": c.emission_um}
            for c in experiment.channels
        ],
        "voxel_size_zyx_um": list(experiment.voxel_size_zyx_um),
        "image_shape_zyx": list(experiment.image_shape_zyx),
        "tile_overlap_fraction": experiment.tile_overlap_fraction,
        "microscope": {
            "numerical_aperture": experiment.numerical_aperture,
            "immersion_refractive_index": experiment.immersion_refractive_index,
            "sample_refractive_index": experiment.sample_refractive_index,
        },
        "camera": {"e_per_adu": experiment.e_per_adu, "offset_adu": experiment.offset_adu,
                   "dark_frame": experiment.dark_frame, "hot_pixel_map": experiment.hot_pixel_map},
        "camera_noise_map_planes": NOISE_MAP_PLANES,
        "psf_model": "psfmodels.vectorial_psf_centered (Aguet et al. 2009), unit sum, channel order as 'channels'",
        "psf_source": {c.name: c.psf if c.psf is not None else "model" for c in experiment.channels},
    }


def hierarchy(paths: ExperimentPaths) -> None:
    """``.zgroup`` files above the round groups, so that ``zarr.open_group`` browses the datastore as one
    hierarchy (init owns these; each tile folder's is its round-0 ingest job's)."""
    for folder in (paths.datastore, paths.datastore / "polyDT", paths.datastore / "readouts"):
        datastore.create_group(folder)


def run_init(experiment_dir, progress=print) -> Path:
    """Validate raw_data metadata and write ``calibrations.zarr`` (marker last).

    Parameters
    ----------
    experiment_dir : str or Path
    progress : callable(str)

    Returns
    -------
    Path
        The group ``calibrations.zarr``.
    """
    paths = ExperimentPaths(experiment_dir)
    experiment = load_experiment(paths.root, check_tiffs=False)
    group = paths.calibrations
    datastore.remove_marker(group)
    datastore.create_group(group)
    noise = camera_noise_map(experiment, paths)
    progress(f"camera_noise_map: {noise.shape[1]} x {noise.shape[2]} px, "
             f"{'dark frame' if experiment.dark_frame else 'scalar offset'}")
    psf = psf_stack(experiment, paths)
    progress(f"psf_data: {len(experiment.channels)} channels, support {psf.shape[1:]} voxels")
    datastore.write_array(group / CAMERA_NOISE_MAP, noise, ("plane", "y", "x"))
    datastore.write_array(group / PSF_DATA, psf, ("channel", "psf_z", "psf_y", "psf_x"))
    hierarchy(paths)
    binary_files = [paths.raw_file(name, "camera file") for name in (experiment.dark_frame, experiment.hot_pixel_map)
                    if name is not None]
    binary_files += [paths.raw / c.psf for c in experiment.channels if c.psf is not None]
    attrs = calibration_attrs(experiment)
    # The metadata files by their parsed content (what the workflow reruns init on), binary files by their bytes.
    inputs = {"metadata": hashlib.sha256(canonical_json(attrs).encode()).hexdigest()}
    inputs.update({str(p.relative_to(paths.root)): datastore.file_digest(p) for p in binary_files})
    attrs.update(datastore.stage_record(
        "init", {}, inputs,
        arrays={CAMERA_NOISE_MAP: datastore.array_record(noise), PSF_DATA: datastore.array_record(psf)}))
    datastore.write_marker(group, attrs)
    return group

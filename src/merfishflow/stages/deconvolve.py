"""The deconvolve stage: ``corrected_data`` into ``decon_data`` for one tile and round; the rule's job does
every round of a tile (:func:`run_deconvolve_tile`).

:func:`run_deconvolve` deconvolves the round's fiducial and the readout bits imaged in that
round, each with its channel's PSF from ``calibrations.zarr/psf_data``, by
:func:`merfishflow.image.deconvolution.richardson_lucy`. ``decon_data`` is uint16
photoelectrons, rounded and saturating at 65535 (the matched back projector keeps the flux; the default
Wiener–Butterworth one adds the clipped, sharpened background noise to it); its own ``.zattrs`` is the
job's marker.
"""

from __future__ import annotations

from dataclasses import dataclass


from ..cpus import blas_threads, map_in_threads
from ..io import datastore
from ..image.correction import to_uint16
from ..image.deconvolution import check_psf_matches, richardson_lucy
from ..io.metadata import Experiment, round_targets
from ..io.paths import CORRECTED_DATA, DECON_DATA, PSF_DATA, ExperimentPaths


@dataclass(frozen=True)
class DeconvolutionParams:
    """Config key ``deconvolution`` (config/README.md)."""

    iterations: int = 3
    stop_tolerance: float | None = None
    acceleration: str = "none"
    back_projector: str = "wiener_butterworth"
    tile_yx: int = 512
    overlap_yx: int | None = None
    z_boundary: str = "auto"
    fiducial: str = "deconvolve"
    device: str = "cpu"

    def to_dict(self) -> dict:
        return {"iterations": self.iterations, "stop_tolerance": self.stop_tolerance,
                "acceleration": self.acceleration, "back_projector": self.back_projector,
                "tile_yx": self.tile_yx,
                "overlap_yx": self.overlap_yx, "z_boundary": self.z_boundary, "fiducial": self.fiducial,
                "device": self.device}


def run_deconvolve(experiment_dir, tile, round_, params=DeconvolutionParams(), progress=print, threads=1):
    """Deconvolve one tile and round; each ``decon_data`` marker is written after its data.

    Returns
    -------
    list of Path
        The ``decon_data`` arrays written.
    """
    paths = ExperimentPaths(experiment_dir)
    calibration = datastore.read_marker(paths.calibrations)
    psfs = datastore.read_array(paths.calibrations, PSF_DATA)
    calibration_digest = datastore.marker_digest(paths.calibrations)
    xp = {"cpu": None, "auto": "auto", "gpu": "cupy"}[params.device]
    written = []
    targets = round_targets(paths, Experiment.from_calibration(calibration), tile, round_)
    for index, (group, channel, _) in enumerate(targets):
        source = datastore.read_marker(group)
        check_psf_matches(calibration["voxel_size_zyx_um"], source["voxel_size_zyx_um"])
        corrected = datastore.read_array(group, CORRECTED_DATA)
        name = calibration["channels"][channel]["name"]
        inputs = {"corrected_data": datastore.marker_digest(group), "calibrations": calibration_digest}
        if index == 0 and params.fiducial == "skip":   # round_targets lists the round's fiducial first
            attrs = datastore.stage_record(
                "deconvolve", params.to_dict(), inputs,
                channel=name, iterations_max=0, iterations_min=0, n_saturated_voxels=0,
                units="photoelectrons: corrected_data, not deconvolved (deconvolution.fiducial: skip)")
            written.append(datastore.write_marked_array(group / DECON_DATA, corrected, attrs, threads=threads).parent)
            progress(f"{tile} {round_} {name}: not deconvolved (deconvolution.fiducial: skip)")
            continue
        estimate, info = richardson_lucy(
            corrected, psfs[channel], params.iterations, stop_tolerance=params.stop_tolerance,
            acceleration=None if params.acceleration == "none" else params.acceleration,
            back_projector=params.back_projector,
            tile_yx=params.tile_yx, overlap_yx=params.overlap_yx, z_boundary=params.z_boundary, xp=xp,
            workers=threads, return_info=True,
            progress=lambda message, name=name: progress(f"{tile} {round_} {name}: {message}"))
        del corrected
        data, saturated = to_uint16(estimate)
        attrs = datastore.stage_record(
            "deconvolve", params.to_dict(), inputs,
            channel=name,
            iterations_max=info.max_iterations,
            iterations_min=int(info.iterations.min()),
            z_boundary=info.z_boundary,
            n_saturated_voxels=saturated,
            units="photoelectrons, rounded, saturating at 65535",
            # The backend changes float rounding, so it is part of what made these bytes.
            backend=info.backend,
        )
        written.append(datastore.write_marked_array(group / DECON_DATA, data, attrs, threads=threads).parent)
        progress(f"{tile} {round_} {name}: {info.max_iterations} iterations, {saturated} saturated voxels")
    return written


def run_deconvolve_tile(experiment_dir, tile, params=DeconvolutionParams(), progress=print, threads=1):
    """:func:`run_deconvolve` for every round of one tile, ``threads`` rounds at a time (one thread each: the
    same bytes as one round after another).

    Returns
    -------
    list of Path
        The ``decon_data`` arrays written, round by round.
    """
    paths = ExperimentPaths(experiment_dir)
    rounds = Experiment.from_calibration(datastore.read_marker(paths.calibrations)).rounds

    def deconvolve(round_):
        return run_deconvolve(experiment_dir, tile, round_, params, progress=progress, threads=1)

    # BLAS's thread limit is process-wide: set once here, so that one round's end cannot lift another's.
    with blas_threads(1):
        return [array for arrays in map_in_threads(deconvolve, rounds, threads) for array in arrays]

"""The registration stages: local (rounds of one tile onto its round 0) and global (tiles in the world).

Local, per tile: every round's deconvolved fiducial is registered to round
0's (:func:`merfishflow.image.registration.register_round`: a rigid sub-pixel
shift, then an optical-flow field at 3 x 3 lateral downsampling, kept only
if it raises the correlation with round 0 by ``min_flow_gain``), the applied
field (zeros when rejected) is stored as ``polyDT/<tile>/<round>.zarr/of_xyz_3x_downsample``, and the
same transform resamples the round's fiducial and every readout bit imaged
in it into ``registered_decon_data``. Round 0 is the reference and is copied
unchanged.

Global, per experiment: :func:`merfishflow.image.stitching.register_tiles` on the
round-0 registered fiducials; every tile's placement goes to its own
subgroup ``polyDT/<tile>/round0000.zarr/global_registration`` (docs/datastore.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..cpus import map_in_threads
from ..io import datastore
from ..image.correction import to_uint16
from ..io.metadata import Experiment, round_targets
from ..io.naming import round_name
from ..io.paths import DECON_DATA, FLOW_FIELD, REGISTERED_DATA, ExperimentPaths
from ..image.registration import register_round, round_correlator
from ..image.stitching import MIN_PAIR_SCORE, register_tiles

FLOW_DOWNSAMPLE = (1, 3, 3)
# Axis names (xarray): the displacement component, then the coarse grid (z is not coarsened).
FLOW_DIMS = ("zyx", "z", "y_coarse", "x_coarse")
FLOW_MEANING = (
    "float32 (3, Z, ceil(Y/3), ceil(X/3)): z, y, x displacement in full-resolution pixels of the non-rigid "
    "remainder after the rigid shift. Coarse sample (k, j, i) sits at full-resolution voxel "
    "(k, 3j + 1, 3i + 1); upsampled linearly to every voxel p, a point at p in round 0 is at "
    "p + shift_zyx_px + field(p) in this round, and registered_decon_data[p] = decon_data[p + shift + field(p)]."
)


@dataclass(frozen=True)
class RegistrationParams:
    """Config key ``registration`` (config/README.md)."""

    upsample_factor: int = 20
    optical_flow: bool = True
    flow_method: str = "ilk"
    min_pair_score: float = MIN_PAIR_SCORE
    rigid_crop_yx: int | None = 1024
    min_flow_gain: float | None = 0.001

    def to_dict(self) -> dict:
        return {"upsample_factor": self.upsample_factor, "optical_flow": self.optical_flow,
                "flow_method": self.flow_method, "min_pair_score": self.min_pair_score,
                "rigid_crop_yx": self.rigid_crop_yx, "min_flow_gain": self.min_flow_gain}


def _rms(field):
    return [float(v) for v in np.sqrt(np.mean(np.asarray(field, np.float64) ** 2, axis=(1, 2, 3)))]


def _scores(registration):
    """The alignment scores and the flow decision recorded in the markers (docs/datastore.md)."""
    decision = {True: "accepted", False: "rejected"}.get(
        registration.flow_accepted, "not computed" if registration.field is None else "accepted unconditionally")
    return {"ncc_before": registration.ncc_before, "ncc_rigid": registration.ncc_rigid,
            "ncc_flow": registration.ncc_after, "flow_decision": decision}


def _registered(image):
    data, _ = to_uint16(np.asarray(image, dtype=np.float32))
    return data


def run_register_local(experiment_dir, tile, params=RegistrationParams(), progress=print, threads=1):
    """Register every round of one tile onto its round 0 and resample the readouts with their round.

    ``threads`` rounds are registered at once (scipy.ndimage, scikit-image's optical flow and the
    FFTs release the GIL), each on one thread; the outputs do not depend on ``threads``.

    Returns
    -------
    dict
        ``{round: shift_zyx_px}``.
    """
    paths = ExperimentPaths(experiment_dir)
    calibration = datastore.read_marker(paths.calibrations)
    experiment = Experiment.from_calibration(calibration)
    rounds = experiment.rounds
    reference_path = paths.fiducial_array(tile, rounds[0], DECON_DATA)
    reference = datastore.read_marked_array(reference_path).astype(np.float32)
    correlator = round_correlator(reference, upsample_factor=params.upsample_factor,
                                  rigid_crop_yx=params.rigid_crop_yx)

    def register(round_):
        return round_, _register_local_round(paths, experiment, tile, round_, reference, reference_path, params,
                                             progress, correlator)

    return dict(map_in_threads(register, rounds, threads))


def _register_local_round(paths, experiment, tile, round_, reference, reference_path, params, progress,
                          correlator):
    """Register one round's fiducial onto ``reference`` (round 0's), write its field and every registered
    channel of the round; returns the rigid shift (zyx px)."""
    reference_name = str(reference_path.relative_to(paths.datastore))
    groups = [(group, channel) for group, channel, _ in round_targets(paths, experiment, tile, round_)]
    fiducial_decon = groups[0][0] / DECON_DATA
    if round_ == experiment.rounds[0]:
        registration, registered_fiducial = None, reference
        shift, extra = np.zeros(3), {"ncc_before": 1.0}
    else:
        moving = datastore.read_marked_array(fiducial_decon).astype(np.float32)
        registration = register_round(reference, moving, downsample=FLOW_DOWNSAMPLE, method=params.flow_method,
                                      flow=params.optical_flow, min_flow_gain=params.min_flow_gain,
                                      correlator=correlator)
        registered_fiducial = registration.registered
        if registered_fiducial is None:
            registered_fiducial = registration.apply(moving)
        del moving
        shift = registration.shift_zyx_px
        extra = _scores(registration)
        field = registration.field if registration.field is not None else np.zeros(
            (3,) + tuple(-(-n // f) for n, f in zip(reference.shape, FLOW_DOWNSAMPLE)), np.float32)
        datastore.write_marked_array(groups[0][0] / FLOW_FIELD, field.astype(np.float32), datastore.stage_record(
            "register_local", params.to_dict(),
            {"reference": datastore.marker_digest(reference_path), "moving": datastore.marker_digest(fiducial_decon)},
            reference=reference_name, round=round_, downsample_zyx=list(FLOW_DOWNSAMPLE), meaning=FLOW_MEANING,
            shift_zyx_px=[float(v) for v in shift], units="full-resolution pixels", rms_px=_rms(field), **extra,
            candidate_rms_px=None if registration.rejected_field is None else _rms(registration.rejected_field),
        ), threads=1, dims=FLOW_DIMS)
    shift = [float(v) for v in shift]
    progress(f"{tile} {round_}: shift {np.round(shift, 3).tolist()} px, "
             + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                         for k, v in extra.items() if v is not None))
    for group, _ in groups:
        source = group / DECON_DATA
        if group == groups[0][0]:
            out = registered_fiducial
        else:
            image = datastore.read_marked_array(source)
            out = image if registration is None else registration.apply(image)
        datastore.write_marked_array(group / REGISTERED_DATA, _registered(out), datastore.stage_record(
            "register_local", params.to_dict(),
            {"decon_data": datastore.marker_digest(source), "reference": datastore.marker_digest(reference_path)},
            reference=reference_name, round=round_, shift_zyx_px=shift, **extra,
            flow_field=None if registration is None else
            str((groups[0][0] / FLOW_FIELD).relative_to(paths.datastore)),
        ), threads=1)
        del out
    return shift


def run_register_global(experiment_dir, tiles, stage_positions_um, params=RegistrationParams(), progress=print):
    """Refine every tile's position from its overlaps and write each tile's ``global_registration``.

    Returns
    -------
    merfishflow.image.stitching.GlobalRegistration
    """
    paths = ExperimentPaths(experiment_dir)
    calibration = datastore.read_marker(paths.calibrations)
    voxel = calibration["voxel_size_zyx_um"]
    sources = [paths.fiducial_array(t, round_name(0), REGISTERED_DATA) for t in tiles]
    digest = datastore.combined_digest(datastore.marker_digest(s) for s in sources)
    for tile in tiles:
        datastore.remove_marker(paths.global_registration(tile))

    def load(t):
        return datastore.read_marked_array(sources[t]).astype(np.float32)

    result = register_tiles(load, np.asarray(stage_positions_um, dtype=np.float64), voxel,
                            min_score=params.min_pair_score, progress=progress)
    progress(f"{len(result.pairs)} overlapping pairs, {sum(p.used for p in result.pairs)} used, "
             f"residual {result.residual_rms_um:.4f} um RMS")
    for t, tile in enumerate(tiles):
        group = datastore.create_group(paths.global_registration(tile))
        pairs = [{"tiles": [tiles[p.i], tiles[p.j]], "offset_zyx_um": [float(v) for v in p.offset_um],
                  "score": p.score, "used": p.used} for p in result.pairs if t in (p.i, p.j)]
        datastore.write_marker(group, datastore.stage_record(
            "register_global", params.to_dict(), {"round0_registered_fiducials": digest},
            tile=tile,
            affine_zyx_um=result.affine_zyx_um(t).tolist(),
            origin_zyx_um=[float(v) for v in result.origin_zyx_um[t]],
            spacing_zyx_um=[float(v) for v in result.spacing_zyx_um],
            stage_zyx_um=[float(v) for v in stage_positions_um[t]],
            meaning="global um = affine_zyx_um @ [z*dz, y*dy, x*dx, 1] for voxel (z, y, x) of this tile's "
                    "registered data; origin_zyx_um is where voxel (0, 0, 0) lies",
            pairs=pairs,
            residual_rms_um=result.residual_rms_um,
        ))
    return result

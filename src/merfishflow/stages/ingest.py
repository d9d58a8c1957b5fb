"""The ingest + correct stage: one raw TIFF (tile x round) into the datastore; the rule's job does every
round of a tile (:func:`run_ingest_tile`).

The TIFF's fiducial channel goes to ``polyDT/<tile>/<round>.zarr`` and each
readout channel to ``readouts/<tile>/<bit>.zarr`` (the bit exp_order.csv
names for that round and channel); each group gets ``camera_data`` (the raw
uint16 counts) and ``corrected_data`` (uint16 photoelectrons, see
:mod:`merfishflow.image.correction`). The TIFF is read in slabs of z-planes, so a
job holds a few planes of one channel at a time whatever the tile size.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from ..cpus import map_in_threads
from ..io import datastore
from ..image.correction import correct_counts, find_hot_pixels, neighbour_index, to_uint16
from ..errors import InputError
from ..io.metadata import Experiment, open_raw_tiff, read_raw_planes, round_targets
from ..io.naming import index_of
from ..io.paths import CAMERA_DATA, CAMERA_NOISE_MAP, CORRECTED_DATA, ExperimentPaths

ARRAYS = (CAMERA_DATA, CORRECTED_DATA)


@dataclass(frozen=True)
class CorrectionParams:
    """Parameters of camera correction (config key ``correction``).

    Attributes
    ----------
    hot_pixel_sigma : float
        Dark-frame pixels this many robust SDs above the median are hot.
    hot_pixel_radius : int
        Hot pixels take the median of their non-hot neighbours within this
        radius (1 = the 3 x 3 neighbourhood).
    """

    hot_pixel_sigma: float = 10.0
    hot_pixel_radius: int = 1

    def to_dict(self) -> dict:
        return {"hot_pixel_sigma": self.hot_pixel_sigma, "hot_pixel_radius": self.hot_pixel_radius}


def run_ingest(experiment_dir, tile, round_, stage_zyx_um, params=CorrectionParams(), progress=print,
               slab_planes=8, threads=1):
    """Ingest and correct one tile and round; markers are written last.

    Parameters
    ----------
    experiment_dir : str or Path
    tile, round_ : str
        ``"tile0000"``, ``"round0003"``.
    stage_zyx_um : sequence of 3 float
        The tile's stage position (stage_positions.csv).
    params : CorrectionParams
    progress : callable(str)
        Called after every slab written; an exception raised there aborts the
        job like a crash would (the markers are not written).
    slab_planes : int
        z-planes read and corrected at once (memory vs. call overhead; does
        not change the output).
    threads : int
        Compression threads (does not change the output).

    Returns
    -------
    list of Path
        The groups written, fiducial first.
    """
    paths = ExperimentPaths(experiment_dir)
    calibration = datastore.read_marker(paths.calibrations)
    noise = datastore.read_array(paths.calibrations, CAMERA_NOISE_MAP)
    experiment = Experiment.from_calibration(calibration)
    channels = calibration["channels"]
    shape = tuple(experiment.image_shape_zyx)
    round_index = index_of(round_, "round")
    rounds = experiment.exp_order
    if not 0 <= round_index < len(rounds):
        raise InputError(f"{round_}: exp_order.csv has rounds 0..{len(rounds) - 1}")
    targets = round_targets(paths, experiment, tile, round_)

    hot = find_hot_pixels(noise[0], params.hot_pixel_sigma, known=noise[2] > 0)
    hot_flat, neighbours = neighbour_index(hot, params.hot_pixel_radius)
    offset, gain = noise[0], float(noise[1].flat[0])
    raw_path = paths.raw_tiff(tile, round_)

    pixel_digest = hashlib.sha256()
    saturated = {}
    z = shape[0]
    # The TIFF is checked before anything is written.
    tif, planes_per_page = open_raw_tiff(raw_path, len(channels), shape)
    with tif:
        for group, _, _ in targets:
            datastore.remove_marker(group)
            datastore.create_group(group)
            if round_index == 0:  # the tile folder's .zgroup: one owner, the tile's round-0 ingest
                datastore.create_group(group.parent)
        pending = []  # the previous slab's writes, finished while the next slab is read and corrected
        for group, channel, _ in targets:
            camera = datastore.create_array(group / CAMERA_DATA, shape, np.uint16, threads=threads)
            corrected = datastore.create_array(group / CORRECTED_DATA, shape, np.uint16, threads=threads)
            for name in (CAMERA_DATA, CORRECTED_DATA):
                datastore.write_dimension_names(group / name, datastore.ZYX)
            saturated[group] = 0
            for z0 in range(0, z, slab_planes):
                z1 = min(z, z0 + slab_planes)
                first = channel * z + z0
                counts = read_raw_planes(tif, first, first + z1 - z0, planes_per_page)
                pixel_digest.update(np.ascontiguousarray(counts).data)
                electrons, n_sat = to_uint16(correct_counts(counts, offset, gain, hot_flat, neighbours))
                saturated[group] += n_sat
                for future in pending:
                    future.result()
                pending = [camera[z0:z1].write(counts), corrected[z0:z1].write(electrons)]
                del counts, electrons
                progress(f"{tile} {round_} {channels[channel]['name']}: planes {z0}-{z1 - 1} of {z} written")
        for future in pending:
            future.result()

    common = datastore.stage_record(
        "ingest", params.to_dict(),
        # Pixels of the fiducial channel, then the readouts, planes in order.
        {"raw_pixels": pixel_digest.hexdigest(), "calibrations": datastore.marker_digest(paths.calibrations)},
        tile=tile,
        round=round_,
        stage_zyx_um=[float(v) for v in stage_zyx_um],
        voxel_size_zyx_um=calibration["voxel_size_zyx_um"],
        n_hot_pixels_replaced=int(len(hot_flat)),
        units={CAMERA_DATA: "ADU", CORRECTED_DATA: "photoelectrons, rounded, saturating at 65535"},
        arrays={name: {"shape": list(shape), "dtype": np.dtype(np.uint16).str, "chunks": [1, *shape[1:]]}
                for name in ARRAYS},
    )
    # Readouts first: the fiducial marker, last, means the whole round is done.
    for group, channel, bit in reversed(targets):
        attrs = dict(common)
        attrs["channel"] = channels[channel]["name"]
        attrs["wavelengths_um"] = [channels[channel]["excitation_um"], channels[channel]["emission_um"]]
        attrs["bit_linker"] = round_index if bit is not None else [int(b) for b in rounds[round_index]]
        attrs["n_saturated_voxels"] = saturated[group]
        datastore.write_marker(group, attrs)
    return [group for group, _, _ in targets]


def run_ingest_tile(experiment_dir, tile, stage_zyx_um, params=CorrectionParams(), progress=print, slab_planes=8,
                    threads=1):
    """:func:`run_ingest` for every round of one tile, ``threads`` rounds at a time (one thread each).

    Returns
    -------
    list of Path
        The groups written, round by round (each round's fiducial first).
    """
    paths = ExperimentPaths(experiment_dir)
    rounds = Experiment.from_calibration(datastore.read_marker(paths.calibrations)).rounds

    def ingest(round_):
        return run_ingest(experiment_dir, tile, round_, stage_zyx_um, params, progress=progress,
                          slab_planes=slab_planes, threads=1)

    return [group for groups in map_in_threads(ingest, rounds, threads) for group in groups]

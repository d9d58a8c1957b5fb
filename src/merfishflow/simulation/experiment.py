"""Simulate a whole experiment: raw_data/ in the pipeline's input format plus ground_truth/."""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
from scipy import ndimage as ndi

from ..errors import InputError
from ..io.metadata import Channel, Experiment
from ..io.naming import codebook_bit_column, round_name, tile_name
from ..image.psf import gaussian_psf, widefield_psf
from ..io import fileio as files
from ..io.fileio import canonical_json
from ..io.paths import ExperimentPaths
from .camera import Camera
from .codebook import codeword_names, make_codebook
from .params import SimulationParams
from .render import FrameRenderer, PolyDTTexture, TileScene, tile_patch
from .scene import SECTION_MARGIN_UM, make_cells, make_spots, place_beads, place_molecules
from .tiles import make_tile_layout, nominal_grid
from .transforms import CONVENTION, make_round_transforms

DARK_FRAME_FILE = "camera_dark_frame.tif"
# Lattice-noise stream ids (independent fields of one seed).
_STREAM_CELL_SHAPE = 1
_STREAM_TEXTURE = 10
_STREAM_BEADS = 11
# Minimum distance between molecules, in voxels (z, y, x): keeps spots separable.
_EXCLUSION_PX = (2.0, 2.0, 2.0)
# spots.parquet also lists, with in_stack = False, the molecules this close (µm, per axis) outside a
# tile's frame: a decoder may rightly report one at the frame's edge, and scoring must recognise it as a
# real molecule (merfishflow.spots.evaluation ignores such matches). Valid for match radii up to this value.
TRUTH_MARGIN_UM = 1.0

PHASE_CORRELATION_NOTE = (
    "skimage.registration.phase_cross_correlation(reference=round 0, moving=round r) returns the "
    "shift that registers round r onto round 0, i.e. approximately -shift_zyx_px[r] (ignoring the "
    "deformation)."
)


def _n_threads():
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


def _as_params(params):
    if params is None:
        return SimulationParams()
    if isinstance(params, SimulationParams):
        return params
    if isinstance(params, dict):
        return SimulationParams.from_dict(params)
    raise InputError(f"simulation params must be a SimulationParams, a dict or None, got {type(params).__name__}")


def _has_files(folder: Path) -> bool:
    """Any file below ``folder`` (Snakemake creates a rule's empty output folders before the job runs)."""
    return folder.is_dir() and any(not p.is_dir() for p in folder.rglob("*"))


def simulation_target_problem(experiment_dir, params, *, same_params: bool = True):
    """Why simulating into ``experiment_dir`` would destroy data, or None when it is safe.

    The simulator writes only into a ``raw_data/`` and ``ground_truth/`` that
    are absent or empty, or that it marked as its own
    (:attr:`ExperimentPaths.simulation_mark`) when it created them; with
    ``same_params`` the mark must also record ``params``. A user's real
    experiment never carries the mark, so it is never overwritten.

    Parameters
    ----------
    experiment_dir : str or Path
    params : SimulationParams
    same_params : bool, optional
        Also refuse a folder the simulator made with other parameters.

    Returns
    -------
    str or None
        A message that names the folder and says what to do.
    """
    paths = ExperimentPaths(experiment_dir)
    occupied = [d for d in (paths.raw, paths.ground_truth) if _has_files(d)]
    if not occupied:
        return None
    if not paths.simulation_mark.is_file():
        return (f"{occupied[0]} holds files that merfishflow's simulator did not write (no "
                f"{paths.simulation_mark.name}); simulating would replace them. To process this experiment set "
                f"simulation.enabled: false; to simulate, point experiment_dir at a new or empty folder")
    if same_params:
        try:
            recorded = json.loads(paths.simulation_mark.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            return f"{paths.simulation_mark}: unreadable simulation mark ({err}); delete {paths.raw} to simulate again"
        wanted = json.loads(canonical_json(params.to_dict()))
        changed = sorted(k for k in set(recorded) | set(wanted) if recorded.get(k) != wanted.get(k))
        if changed:
            return (f"{paths.raw} was simulated with other parameters ({', '.join(changed)} differ); delete "
                    f"{paths.raw} and {paths.ground_truth} to simulate again, or choose another experiment_dir")
    return None


def _prepare_folders(root, params, overwrite):
    paths = ExperimentPaths(root)
    problem = simulation_target_problem(root, params, same_params=False)
    if problem:
        raise InputError(f"simulate_experiment: {problem}")
    existing = [d for d in (paths.raw, paths.ground_truth) if _has_files(d)]
    if existing and not overwrite:
        raise InputError(
            f"simulate_experiment: {existing[0]} already exists and is not empty; "
            "choose a new experiment_dir or pass overwrite=True"
        )
    for d in existing:
        shutil.rmtree(d)
    paths.raw.mkdir(parents=True, exist_ok=True)
    paths.ground_truth.mkdir(parents=True, exist_ok=True)
    # First, before any other file: from here on the folder is the simulator's to replace.
    files.write_text(paths.simulation_mark, canonical_json(params.to_dict()))
    return paths.raw, paths.ground_truth


def _bead_scene(beads, origin_um, voxel, shape, margin, bead_photons):
    """TileScene bead fields of one tile (none for a polyDT fiducial)."""
    if beads is None:
        return {}
    bead_um, displacement = beads
    b0 = (bead_um - origin_um) / voxel
    near = np.flatnonzero(np.all((b0 >= -margin) & (b0 <= shape - 1 + margin), axis=1))
    return {"bead_px": b0[near], "bead_displacement_px": displacement[:, near],
            "bead_photons": np.full(len(near), float(bead_photons))}


def simulate_experiment(experiment_dir, params=None, progress=None, *, overwrite=False):
    """Simulate a MERFISH experiment and write its raw data and ground truth.

    Writes ``<experiment_dir>/raw_data/`` exactly as docs/raw_data.md specifies
    (``experiment.yaml`` last, so its presence means the folder is complete)
    and ``<experiment_dir>/ground_truth/`` as docs/simulator.md describes.
    The same parameters always give byte-identical files.

    Parameters
    ----------
    experiment_dir : str or Path
        Experiment folder; created if missing.
    params : SimulationParams or dict or None, optional
        Parameters (a dict goes through :meth:`SimulationParams.from_dict`);
        None uses the defaults.
    progress : callable(str), optional
        Called with one message per simulated tile.
    overwrite : bool, optional
        Replace existing ``raw_data/`` and ``ground_truth/`` folders that an
        earlier simulation wrote (they carry its mark) instead of refusing to
        write into them. Folders without the mark are never replaced.

    Returns
    -------
    dict
        Paths (``pathlib.Path``) of what was written: ``experiment_dir``,
        ``raw_data``, ``experiment_yaml``, ``codebook``, ``exp_order``,
        ``stage_positions``, ``dark_frame``, ``raw_tiffs`` (list, tile-major),
        ``ground_truth``, ``spots``, ``cells``, ``cell_labels`` (list, one per
        tile), ``transforms``, ``deformation_fields`` (list, may be empty),
        ``bits``, ``hot_pixels``, ``simulation``.

    Raises
    ------
    InputError
        Bad parameters, an impossible codebook, or a non-empty output folder.
    """
    p = _as_params(params)
    root = Path(experiment_dir)
    # Validate everything that can fail before touching the folder.
    codebook = make_codebook(p.n_bits, p.n_genes + p.n_blanks, p.codeword_weight, p.min_hamming_distance, p.seed)
    names = codeword_names(p.n_genes, p.n_blanks)
    channels = p.channels
    if p.psf_kind == "gaussian":
        psfs = [gaussian_psf(p.voxel_size_zyx_um, p.gaussian_psf_sigma_zyx_um) for _ in channels]
    else:
        psfs = [widefield_psf(p.voxel_size_zyx_um, em, p.numerical_aperture, p.immersion_refractive_index,
                              p.sample_refractive_index) for _, _, _, em in channels]
    raw, gt = _prepare_folders(root, p, overwrite)

    seq = np.random.SeedSequence(p.seed)
    (ss_layout, ss_rounds, ss_cells, ss_spots, ss_camera, ss_noise) = seq.spawn(6)
    voxel = np.asarray(p.voxel_size_zyx_um, dtype=np.float64)
    shape = np.asarray(p.image_shape_zyx, dtype=np.int64)
    n_tiles, n_rounds, n_ro = p.n_tiles, p.n_rounds, p.n_readout_channels

    layout = make_tile_layout(p.n_tiles_yx, p.image_shape_zyx, voxel, p.tile_overlap_fraction,
                              p.stage_error_sd_um, np.random.default_rng(ss_layout))
    transforms = make_round_transforms(n_rounds, p.max_shift_zyx_px, p.deformation_amplitude_px,
                                       p.deformation_scale_um, voxel, np.random.default_rng(ss_rounds))

    # Frames are rendered with `pad` extra voxels per side (PSF reach); tile
    # patches extend further by the largest expected round displacement.
    # The fiducial's fractional shift is applied in Fourier space; one more
    # voxel keeps its wrap-around out of the cropped tile.
    pad = np.max([np.asarray(psf.shape) // 2 for psf in psfs], axis=0).astype(np.int64) + 1
    deformation_sd_px = p.deformation_amplitude_px * voxel[1] / voxel
    margin = pad + np.ceil(np.asarray(p.max_shift_zyx_px)).astype(np.int64) \
        + np.ceil(4 * deformation_sd_px).astype(np.int64) + 2
    world_lo = layout.true_um.min(axis=0) - margin * voxel
    world_hi = layout.true_um.max(axis=0) + (shape - 1 + margin) * voxel
    section = (-SECTION_MARGIN_UM, (shape[0] - 1) * voxel[0] + SECTION_MARGIN_UM)

    rng_cells = np.random.default_rng(ss_cells)
    cells = make_cells(world_lo, world_hi, section, p.cell_radius_um, rng_cells, p.seed, _STREAM_CELL_SHAPE)
    rng_spots = np.random.default_rng(ss_spots)
    world_pos, cell_of_spot = place_molecules(cells, p.spots_per_cell, p.fraction_spots_outside_cells,
                                              world_lo, world_hi, np.asarray(_EXCLUSION_PX) * voxel, rng_spots)
    spots, bit_factor = make_spots(cells, codebook, p.n_genes, world_pos, cell_of_spot, p, rng_spots)
    texture = PolyDTTexture(p.seed, _STREAM_TEXTURE, voxel)
    camera = Camera.random(tuple(shape[1:]), p.e_per_adu, p.offset_adu, p.fixed_pattern_sd_adu, p.read_noise_e,
                           p.n_hot_pixels, np.random.default_rng(ss_camera))
    frame_streams = ss_noise.spawn(n_tiles * n_rounds)
    # Where every molecule goes in every round, relative to its round-0 position.
    displacement = np.stack([t.displacement(spots.world_um) for t in transforms])  # (rounds, n, 3)
    beads = None
    if p.fiducial_kind == "beads":
        # A stream of its own: the polyDT default draws exactly the numbers it always did.
        rng_beads = np.random.default_rng([p.seed, _STREAM_BEADS])
        bead_um = place_beads(world_lo, world_hi, (0.0, (shape[0] - 1) * voxel[0]), p.bead_spacing_px * voxel[1],
                              rng_beads)
        beads = (bead_um, np.stack([t.displacement(bead_um) for t in transforms]))

    out = {"experiment_dir": root, "raw_data": raw, "ground_truth": gt}
    out.update(_write_static_raw(raw, p, codebook, names, layout, camera, channels))
    if p.psf_kind == "gaussian":
        # The rendering PSF, as a microscope's measured bead PSF would be supplied (docs/raw_data.md).
        out["psfs"] = [files.write_tiff(raw / _psf_file(name), psf) for (name, _, _, _), psf in zip(channels, psfs)]

    renderer = FrameRenderer(psfs, p.image_shape_zyx, voxel, pad, margin, p.background_photons)
    patch_shape = tuple(int(n) for n in shape + 2 * margin)
    tile_crop = tuple(slice(int(m), int(m + n)) for m, n in zip(margin, shape))
    deformation_bytes = n_tiles * max(n_rounds - 1, 0) * 3 * int(np.prod(shape)) * 4
    write_deformation = 0 < deformation_bytes <= p.deformation_field_max_mb * 2**20

    def render_frame(scene, t, r):
        bits = [r * n_ro + c for c in range(n_ro)]
        electrons = renderer.render(scene, transforms[r], bits)
        # Each frame has its own noise stream, so the bytes do not depend on
        # which thread renders which frame.
        counts = camera.expose(electrons, np.random.default_rng(frame_streams[t * n_rounds + r]))
        written = [files.write_tiff(raw / tile_name(t) / f"{round_name(r)}.tif", counts)]
        if write_deformation and r > 0:
            deformation = transforms[r].deformation
            field = (deformation.on_grid(scene.origin_um, voxel, p.image_shape_zyx) if deformation is not None
                     else np.zeros((3,) + p.image_shape_zyx, np.float32))
            written.append(files.write_tiff(gt / f"deformation_{tile_name(t)}_{round_name(r)}.tif", field))
        return written

    raw_tiffs, label_files, deformation_files, spot_rows = [], [], [], []
    # Rounds of a tile render in parallel threads (the heavy numpy/scipy work
    # releases the GIL).
    with ThreadPoolExecutor(max_workers=_n_threads()) as pool:
        for t in range(n_tiles):
            origin = layout.true_um[t]
            labels, fiducial, cell_mask = tile_patch(cells, texture, origin, voxel, -margin, patch_shape,
                                                     p.fiducial_photons)
            label_files.append(files.write_tiff(gt / f"cells_{tile_name(t)}.tif",
                                                labels[tile_crop].astype(np.uint32)))
            p0 = (spots.world_um - origin) / voxel
            in_frame = np.all((p0 >= -0.5) & (p0 < shape - 0.5), axis=1)
            reach = TRUTH_MARGIN_UM / voxel
            listed = np.flatnonzero(np.all((p0 >= -0.5 - reach) & (p0 < shape - 0.5 + reach), axis=1))
            spot_rows.append((t, listed, p0[listed], in_frame[listed]))
            near = np.flatnonzero(np.all((p0 >= -margin) & (p0 <= shape - 1 + margin), axis=1))
            scene = TileScene(
                origin_um=origin,
                fiducial=fiducial,
                # Cubic B-spline interpolation of the stain: a smooth kernel
                # avoids biasing sub-pixel registration toward whole pixels.
                fiducial_coeffs=ndi.spline_filter(fiducial, order=3, mode="nearest"),
                cell_mask=cell_mask,
                spot_px=p0[near],
                spot_bit_photons=spots.bit_photons[near],
                spot_displacement_px=displacement[:, near],
                **_bead_scene(beads, origin, voxel, shape, margin, p.bead_photons),
            )
            for written in pool.map(lambda r, scene=scene, t=t: render_frame(scene, t, r), range(n_rounds)):
                raw_tiffs.append(written[0])
                deformation_files.extend(written[1:])
            if progress is not None:
                progress(f"simulated {tile_name(t)} ({t + 1}/{n_tiles}): {n_rounds} rounds x {len(channels)} channels")

    out["raw_tiffs"] = raw_tiffs
    out["cell_labels"] = label_files
    out["deformation_fields"] = deformation_files
    out["spots"] = files.write_parquet(gt / "spots.parquet", _spots_table(spots, names, layout, voxel, spot_rows))
    out["cells"] = files.write_parquet(gt / "cells.parquet", _cells_table(cells, spots))
    out["transforms"] = files.write_json(gt / "transforms.json",
                                         _transforms_json(p, layout, transforms, voxel, write_deformation))
    out["bits"] = files.write_csv(
        gt / "bits.csv", ["bit", "round", "channel", "brightness_factor"],
        [(b + 1, b // n_ro, channels[1 + b % n_ro][0], repr(float(bit_factor[b]))) for b in range(p.n_bits)])
    out["hot_pixels"] = files.write_csv(
        gt / "hot_pixels.csv", ["y", "x", "dark_adu"],
        [(int(y), int(x), repr(float(a))) for (y, x), a in zip(camera.hot_yx, camera.hot_dark_adu)])
    out["simulation"] = files.write_json(gt / "simulation.json", p.to_dict())
    # Last: its presence tells the pipeline that raw_data is complete.
    out["experiment_yaml"] = files.write_yaml(raw / "experiment.yaml", _experiment_yaml(p, channels))
    return out


def planned_experiment(params) -> Experiment:
    """The metadata a simulation will write, known before it runs (no codebook).

    The workflow is built from it when the config asks for a simulated
    experiment, and the simulator writes exp_order.csv and
    stage_positions.csv from it, so the two always agree.

    Parameters
    ----------
    params : SimulationParams or dict or None

    Returns
    -------
    merfishflow.io.metadata.Experiment
        With empty ``gene_ids`` and ``codewords``.
    """
    p = _as_params(params)
    n_ro = p.n_readout_channels
    _, nominal = nominal_grid(p.n_tiles_yx, p.image_shape_zyx, p.voxel_size_zyx_um, p.tile_overlap_fraction)
    return Experiment(
        voxel_size_zyx_um=tuple(p.voxel_size_zyx_um),
        image_shape_zyx=tuple(p.image_shape_zyx),
        tile_overlap_fraction=p.tile_overlap_fraction,
        numerical_aperture=p.numerical_aperture,
        immersion_refractive_index=p.immersion_refractive_index,
        sample_refractive_index=p.sample_refractive_index,
        e_per_adu=p.e_per_adu,
        offset_adu=p.offset_adu,
        dark_frame=DARK_FRAME_FILE,
        hot_pixel_map=None,
        channels=tuple(Channel(*c) for c in p.channels),
        exp_order=tuple(tuple(k * n_ro + c + 1 for c in range(n_ro)) for k in range(p.n_rounds)),
        gene_ids=(),
        codewords=(),
        stage_positions_um=tuple(tuple(float(v) for v in row) for row in nominal),
    )


def _write_static_raw(raw, p, codebook, names, layout, camera, channels):
    plan = planned_experiment(p)
    header = ["gene_id"] + [codebook_bit_column(b + 1) for b in range(p.n_bits)]
    codebook_rows = [[name] + [int(v) for v in row] for name, row in zip(names, codebook)]
    readouts = [name for name, role, _, _ in channels if role == "readout"]
    order_rows = [[k] + list(bits) for k, bits in enumerate(plan.exp_order)]
    stage_rows = [[t] + [f"{v:.6f}" for v in pos] for t, pos in enumerate(plan.stage_positions_um)]
    return {
        "codebook": files.write_csv(raw / "codebook.csv", header, codebook_rows),
        "exp_order": files.write_csv(raw / "exp_order.csv", ["round"] + readouts, order_rows),
        "stage_positions": files.write_csv(raw / "stage_positions.csv",
                                           ["tile", "stage_z_um", "stage_y_um", "stage_x_um"], stage_rows),
        "dark_frame": files.write_tiff(raw / DARK_FRAME_FILE, camera.dark_frame),
    }


def _psf_file(channel_name):
    return f"psf_{channel_name}.tif"


def _experiment_yaml(p, channels):
    return {
        "format_version": 1,
        "voxel_size_zyx_um": list(p.voxel_size_zyx_um),
        "image_shape_zyx": list(p.image_shape_zyx),
        "tile_overlap_fraction": p.tile_overlap_fraction,
        "microscope": {
            "numerical_aperture": p.numerical_aperture,
            "immersion_refractive_index": p.immersion_refractive_index,
            "sample_refractive_index": p.sample_refractive_index,
        },
        "camera": {
            "e_per_adu": p.e_per_adu,
            "offset_adu": p.offset_adu,
            "dark_frame": DARK_FRAME_FILE,
            "hot_pixel_map": None,
        },
        "channels": [
            {"name": name, "role": role, "excitation_um": ex, "emission_um": em,
             **({"psf": _psf_file(name)} if p.psf_kind == "gaussian" else {})}
            for name, role, ex, em in channels
        ],
    }


def _spots_table(spots, names, layout, voxel, spot_rows):
    n_bits = spots.bit_photons.shape[1]
    cols = {k: [] for k in ("spot_id", "tile", "px", "in_stack")}
    for t, index, px, in_stack in spot_rows:
        cols["spot_id"].append(index.astype(np.int64))
        cols["tile"].append(np.full(len(index), t, dtype=np.int32))
        cols["px"].append(px.reshape(-1, 3))
        cols["in_stack"].append(np.asarray(in_stack, dtype=bool))
    spot_id = np.concatenate(cols["spot_id"]) if cols["spot_id"] else np.zeros(0, np.int64)
    tile = np.concatenate(cols["tile"]) if cols["tile"] else np.zeros(0, np.int32)
    px = np.concatenate(cols["px"]) if cols["px"] else np.zeros((0, 3))
    in_stack = np.concatenate(cols["in_stack"]) if cols["in_stack"] else np.zeros(0, bool)
    # Global = true stage position of the tile + px * voxel (agrees across tiles up to rounding).
    global_um = layout.true_um[tile] + px * voxel
    masks = spots.dropped_mask[spot_id]
    dropped = [";".join(str(b + 1) for b in range(n_bits) if (int(m) >> b) & 1) for m in masks]
    bit_photons = spots.bit_photons[spot_id]
    return pa.table({
        "spot_id": pa.array(spot_id, pa.int64()),
        "gene_id": pa.array([names[b] for b in spots.barcode_id[spot_id]], pa.string()),
        "barcode_id": pa.array(spots.barcode_id[spot_id], pa.int32()),
        "cell_id": pa.array(spots.cell_id[spot_id], pa.int32()),
        "tile": pa.array(tile, pa.int32()),
        "z_px": pa.array(px[:, 0], pa.float64()),
        "y_px": pa.array(px[:, 1], pa.float64()),
        "x_px": pa.array(px[:, 2], pa.float64()),
        "global_z_um": pa.array(global_um[:, 0], pa.float64()),
        "global_y_um": pa.array(global_um[:, 1], pa.float64()),
        "global_x_um": pa.array(global_um[:, 2], pa.float64()),
        "photons": pa.array(spots.photons[spot_id], pa.float64()),
        "dropped_bits": pa.array(dropped, pa.string()),
        "dropped_bits_mask": pa.array(masks, pa.int64()),
        "bit_photons": pa.FixedSizeListArray.from_arrays(pa.array(bit_photons.reshape(-1), pa.float64()), n_bits),
        "in_stack": pa.array(in_stack, pa.bool_()),
    })


def _cells_table(cells, spots):
    seeds = np.flatnonzero(cells.cell_id > 0)
    ids = cells.cell_id[seeds]
    n_spots = np.bincount(spots.cell_id, minlength=cells.n_cells + 1)[ids]
    return pa.table({
        "cell_id": pa.array(ids, pa.int32()),
        "cell_type": pa.array(cells.cell_type[seeds], pa.int32()),
        "center_z_um": pa.array(cells.seeds_um[seeds, 0], pa.float64()),
        "center_y_um": pa.array(cells.seeds_um[seeds, 1], pa.float64()),
        "center_x_um": pa.array(cells.seeds_um[seeds, 2], pa.float64()),
        "radius_um": pa.array(cells.radius_um[seeds], pa.float64()),
        "nucleus_radius_um": pa.array(cells.nucleus_radius_um[seeds], pa.float64()),
        "n_spots": pa.array(n_spots, pa.int64()),
    })


def _transforms_json(p, layout, transforms, voxel, wrote_deformation):
    tiles = []
    for t in range(layout.n_tiles):
        err = layout.error_um[t]
        tiles.append({
            "tile": t,
            "name": tile_name(t),
            "grid_yx": [int(v) for v in layout.grid_yx[t]],
            "nominal_stage_zyx_um": [float(v) for v in layout.nominal_um[t]],
            "true_stage_zyx_um": [float(v) for v in layout.true_um[t]],
            "stage_error_zyx_um": [float(v) for v in err],
            "stage_error_zyx_px": [float(v) for v in err / voxel],
        })
    rounds = []
    for tr in transforms:
        rounds.append({
            "round": tr.round_index,
            "name": round_name(tr.round_index),
            "shift_zyx_px": [float(v) for v in tr.shift_px],
            "deformation": None if tr.deformation is None else tr.deformation.to_json(),
        })
    return {
        "convention": CONVENTION,
        "phase_cross_correlation": PHASE_CORRELATION_NOTE,
        "voxel_size_zyx_um": [float(v) for v in voxel],
        "pixel_centres": "integer pixel coordinates are voxel centres; a tile's voxel (0, 0, 0) is at its "
                         "stage position",
        "deformation_model": {
            "formula": "deformation_r(w)[c] = sum_k cos_amplitudes_px[c][k] * cos(dot(wavevectors_per_um[k], w)) "
                       "+ sin_amplitudes_px[c][k] * sin(dot(wavevectors_per_um[k], w)); w = world (z, y, x) um; "
                       "c = z, y, x component in pixels",
            "amplitude_px": p.deformation_amplitude_px,
            "amplitude_meaning": "RMS of the y and x components in pixels; isotropic in um, so the z component's "
                                 "RMS in pixels is amplitude_px * dy / dz",
            "scale_um": p.deformation_scale_um,
            "fields_written": bool(wrote_deformation),
            "fields": "deformation_tileNNNN_roundNNNN.tif: float32 (3, Z, Y, X), deformation_r (without the shift) "
                      "at every voxel p of tile t's round-0 image, components z, y, x in pixels",
        },
        "tiles": tiles,
        "rounds": rounds,
    }


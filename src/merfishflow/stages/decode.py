"""The decode, filter and evaluate stages: registered readouts to spot tables.

decode (per tile): every bit's ``registered_decon_data`` is streamed in
z-slabs through :func:`merfishflow.spots.decoding.decode_tile`; the spots get their
gene, their global position (the tile's ``global_registration`` origin plus
pixel x voxel size) and ``is_blank``, and go to
``decoded/tileNNNN_decoded_features.parquet``. The normalization and
thresholds used are in the file's metadata (key ``merfishflow``).

filter (experiment): all tiles' spots, blank-based FDR control, then overlap
duplicates removed (:mod:`merfishflow.spots.filtering`) into
``decoded/all_tiles_filtered.parquet`` and starfish's DecodedSpots CSV.

evaluate (simulated experiments): the filtered spots against
``ground_truth/spots.parquet`` (:mod:`merfishflow.spots.evaluation`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..io import datastore
from ..spots.decoding import DecodingParams, decode_tile
from ..errors import InputError
from ..spots.evaluation import score_spots
from ..io.fileio import atomic, canonical_json, write_text
from ..spots.filtering import FilterParams, fdr_filter, remove_overlap_duplicates, starfish_table
from ..io.naming import bit_name
from ..io.paths import REGISTERED_DATA, ExperimentPaths

METADATA_KEY = b"merfishflow"
BLANK_PREFIX = "Blank-"


SPOT_ID_TILE_STRIDE = 1_000_000_000


def spot_schema(n_bits: int) -> pa.Schema:
    """Column types of the per-tile and all-tile spot tables (docs/outputs.md)."""
    fields = [
        ("tile", pa.int32()), ("spot_id", pa.int64()), ("gene_id", pa.string()), ("barcode_id", pa.int32()),
        ("z_px", pa.float64()), ("y_px", pa.float64()), ("x_px", pa.float64()),
        ("global_z_um", pa.float64()), ("global_y_um", pa.float64()), ("global_x_um", pa.float64()),
        ("distance", pa.float32()), ("magnitude", pa.float32()), ("area", pa.int32()),
        ("is_blank", pa.bool_()),
    ]
    fields += [(f"intensity_{bit_name(b)}", pa.float32()) for b in range(1, n_bits + 1)]
    return pa.schema(fields)


def spot_ids(tile_index: int, n_spots: int) -> np.ndarray:
    """Experiment-wide spot ids, kept by every later table: ``tile * SPOT_ID_TILE_STRIDE + row in the tile's
    decoded table`` (tile 3's spot 42 is 3000000042)."""
    return np.int64(tile_index) * SPOT_ID_TILE_STRIDE + np.arange(n_spots, dtype=np.int64)


def write_spot_table(path: Path, frame: pd.DataFrame, schema: pa.Schema, metadata: dict) -> Path:
    table = pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)
    table = table.replace_schema_metadata({METADATA_KEY: canonical_json(metadata).encode()})
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic(path, lambda p: pq.write_table(table, p, compression="zstd"))


def read_metadata(path) -> dict:
    """What a stage recorded in a spot table's Parquet metadata."""
    meta = pq.read_schema(path).metadata or {}
    if METADATA_KEY not in meta:
        raise InputError(f"{path}: not a merfishflow spot table (no {METADATA_KEY.decode()!r} metadata)")
    return json.loads(meta[METADATA_KEY])


def decode_tile_stage(experiment_dir, tile, params=DecodingParams(), progress=print) -> Path:
    """Decode one tile into ``decoded/<tile>_decoded_features.parquet``."""
    paths = ExperimentPaths(experiment_dir)
    calibration = datastore.read_marker(paths.calibrations)
    codebook = calibration["exp_codebook"]
    bits = codebook["bits"]
    codewords = np.asarray(codebook["codewords"], dtype=np.float32)
    gene_ids = list(codebook["gene_id"])
    if codewords.shape[1:] != (len(bits),):
        raise InputError(f"{paths.calibrations}: the codebook has {codewords.shape[1]} bits but {len(bits)} bits "
                         "are imaged")
    arrays = [paths.readout_array(tile, bit, REGISTERED_DATA) for bit in bits]
    handles = [datastore.open_marked_array(a) for a in arrays]
    shape = tuple(int(n) for n in handles[0].shape)
    for bit, handle in zip(bits, handles):
        if tuple(handle.shape) != shape:
            raise InputError(f"{tile} {bit}: registered_decon_data has shape {tuple(handle.shape)}, {bits[0]} has "
                             f"{shape}; every bit of a tile must have the same shape")

    def read_bits(z0, z1, window=None, out=None):
        # Each bit read into its place in one float32 array, the decoder's own buffer (np.stack + astype made two
        # more whole copies, a fresh array costs page faults).
        y0, y1, x0, x1 = window if window is not None else (0, shape[1], 0, shape[2])
        want = (len(handles), z1 - z0, y1 - y0, x1 - x0)
        if out is None or out.shape != want:
            out = np.empty(want, np.float32)
        for k, (h, a) in enumerate(zip(handles, arrays)):
            out[k] = datastore.read_region(h, np.s_[z0:z1, y0:y1, x0:x1], a)
        return out

    placement_group = paths.global_registration(tile)
    placement = datastore.read_marker(placement_group)
    voxel = np.asarray(calibration["voxel_size_zyx_um"], dtype=np.float64)
    result = decode_tile(read_bits, shape, codewords, voxel, params, progress=progress)
    spots = result.spots.copy()
    origin = np.asarray(placement["origin_zyx_um"], dtype=np.float64)
    tile_index = int(tile[len("tile"):])
    spots.insert(0, "tile", np.int32(tile_index))
    spots.insert(1, "spot_id", spot_ids(tile_index, len(spots)))
    genes = [gene_ids[b] for b in spots["barcode_id"].to_numpy()]
    spots["gene_id"] = pd.Series(genes, index=spots.index, dtype=object)
    for axis, name in enumerate(("z", "y", "x")):
        spots[f"global_{name}_um"] = origin[axis] + spots[f"{name}_px"].to_numpy(np.float64) * voxel[axis]
    spots["is_blank"] = np.array([g.startswith(BLANK_PREFIX) for g in genes], dtype=bool)
    digests = [datastore.marker_digest(a) for a in arrays] + [datastore.marker_digest(placement_group)]
    metadata = {
        "stage": "decode", "tile": tile, "software": datastore.software_versions(), "parameters": params.to_dict(),
        "normalization": {"bits": bits, "scale": [float(v) for v in result.scale],
                          "background": [float(v) for v in result.background]},
        "thresholds": {"distance": float(result.distance_threshold), "magnitude": float(result.magnitude_threshold)},
        "refinement": {"history": result.history, "converged": bool(result.converged)},
        "inputs_sha256": hashlib.sha256("".join(digests).encode()).hexdigest(),
        "n_spots": int(len(spots)), "n_blank": int(spots["is_blank"].sum()),
    }
    out = paths.decoded_tile(tile)
    write_spot_table(out, spots, spot_schema(len(bits)), metadata)
    progress(f"{tile}: {len(spots)} spots ({int(spots['is_blank'].sum())} blank) -> {out.name}")
    return out


def filter_experiment(experiment_dir, tiles, params=FilterParams(), progress=print):
    """All tiles' spots, FDR-filtered and without overlap duplicates, to Parquet and starfish CSV."""
    paths = ExperimentPaths(experiment_dir)
    calibration = datastore.read_marker(paths.calibrations)
    gene_ids = calibration["exp_codebook"]["gene_id"]
    n_blank_codes = sum(g.startswith(BLANK_PREFIX) for g in gene_ids)
    n_bits = len(calibration["exp_codebook"]["bits"])
    frames, digests = [], []
    for tile in tiles:
        path = paths.decoded_tile(tile)
        digests.append(datastore.file_digest(path))
        frames.append(pq.read_table(path).to_pandas())
    spots = pd.concat(frames, ignore_index=True)
    keep, report = fdr_filter(spots, len(gene_ids) - n_blank_codes, n_blank_codes, params.target_fdr)
    passed = spots[keep].reset_index(drop=True)
    unique = remove_overlap_duplicates(passed, params.overlap_radius_um)
    report["n_overlap_duplicates"] = int((~unique).sum())
    # Blanks that pass stay in the table (is_blank): they are how a user checks the FDR.
    final = passed[unique].reset_index(drop=True)
    # A codebook without blank codewords cannot estimate the FDR (fdr_filter then keeps every spot).
    fdr = "n/a: no blank codewords" if report["estimated_fdr"] is None else f"{report['estimated_fdr']:.4f}"
    progress(f"{report['n_input']} spots, {report['n_kept']} pass the FDR filter (estimated FDR "
             f"{fdr}, target {params.target_fdr}), {report['n_overlap_duplicates']} overlap "
             f"duplicates removed, {len(final)} spots kept ({int(final['is_blank'].sum())} blank)")
    metadata = {"stage": "filter", "software": datastore.software_versions(), "parameters": params.to_dict(),
                "report": report, "tiles": list(tiles),
                "inputs_sha256": hashlib.sha256("".join(digests).encode()).hexdigest()}
    write_spot_table(paths.filtered_spots, final, spot_schema(n_bits), metadata)
    csv = starfish_table(final, calibration["voxel_size_zyx_um"])
    atomic(paths.filtered_spots_csv, lambda p: csv.to_csv(p, index=False, float_format="%.6g", lineterminator="\n"))
    return final, report


def evaluate_experiment(experiment_dir, radius_um=0.5, progress=print) -> dict:
    """Score the filtered spots against the simulator's truth; writes ``decoded/evaluation.json``."""
    paths = ExperimentPaths(experiment_dir)
    calibration = datastore.read_marker(paths.calibrations)
    spots = pq.read_table(paths.filtered_spots).to_pandas()
    truth_path = paths.ground_truth / "spots.parquet"
    if not truth_path.is_file():
        raise InputError(f"{truth_path}: not found; evaluation needs a simulated experiment's ground truth")
    truth = pq.read_table(truth_path).to_pandas()
    scores = score_spots(spots, truth, calibration["voxel_size_zyx_um"], radius_um)
    overall, strict = scores["overall"], scores["overall_strict"]
    progress(f"evaluation: F1 {overall['f1']:.4f}, precision {overall['precision']:.4f}, recall "
             f"{overall['recall']:.4f} ({overall['n_decoded']} spots, {overall['n_molecules']} molecules, "
             f"{overall['n_ignored']} spots on molecules just outside the stacks ignored; strict F1 "
             f"{strict['f1']:.4f}, precision {strict['precision']:.4f}; match radius {radius_um} um)")
    write_text(paths.evaluation_json, canonical_json(scores))
    return scores


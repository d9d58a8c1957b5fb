"""Benchmark of pixel decoding (merfishflow.spots.decoding.decode_tile): throughput, breakdown, peak memory.

Not part of the test suite. Synthetic bit images (no simulator, no pipeline):
a Gaussian background of 20 +- sqrt(20) e- per voxel (the Poisson level of
the simulator's readouts) plus sparse molecules, each a 3D Gaussian spot
(sigma 1 x 1.5 x 1.5 voxels, ~600 e- peak) in the 4 bits of a random
codeword of the 140-word 16-bit weight-4 distance-4 code.

1. **Throughput** on one tile (``--shape``, default 16 x 1024 x 1024, 16
   bits): wall time of ``decode_tile`` (median of ``--repeats``) in Mvoxel/s,
   and the **sgemm bound** measured in the same run: the float32 matrix
   product ``(pixels x 16) @ (16 x 140)`` for the same pixel count, done in
   chunks of ``DecodingParams.chunk_pixels`` rows into one preallocated result
   (numpy matmul, whatever BLAS
   numpy uses, with its default threads), interleaved with the decodes so that
   load from other processes hits both. Also both single-threaded
   (``DecodingParams(n_threads=1)`` against sgemm under
   ``threadpool_limits(1)``), which load on a shared machine distorts far less
   than OpenBLAS's multi-threaded sgemm; the time ``decode_tile`` spends in ``read_bits`` (here a copy
   of the pre-generated tile into the buffer the decoder passes) is reported too. Breakdown: the DoG filters alone
   (``enhance_bits`` over the tile, whole or slab by slab as ``decode_tile``
   reads it) and the rest.
2. **Peak memory** of decoding a Z x 2048 x 2048 tile of 16 bits
   (``--memory-z``, default 8 and 24 planes): peak RSS of a subprocess that
   decodes it, ``read_bits`` generating the planes on the fly, minus the
   peak RSS of a subprocess that only imports the same modules. Flat in Z
   (slabs), so a 100-plane tile needs the same.

Usage
-----
    python benchmarks/bench_decoding.py                    # ~4 min on 2 cores
    python benchmarks/bench_decoding.py --shape 8 512 512 --memory-z   # quick, no memory runs
    python benchmarks/bench_decoding.py --append           # also append to benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
VOXEL = (0.31, 0.108, 0.108)
N_BITS = 16
SPOTS_PER_MVOX = 60.0


def codebook():
    from merfishflow.simulation import make_codebook

    return np.asarray(make_codebook(N_BITS, 140, weight=4, min_hamming_distance=4, seed=0), dtype=np.uint8)


class SyntheticTile:
    """``read_bits(z0, z1, window=None, out=None)``: deterministic synthetic planes, generated on demand
    (nothing kept) into a new array (``out`` is not used)."""

    def __init__(self, shape, codewords, seed=0):
        self.shape = tuple(shape)
        self.codewords = codewords
        rng = np.random.default_rng(seed)
        z, y, x = self.shape
        n = int(SPOTS_PER_MVOX * z * y * x / 1e6)
        self.centres = rng.uniform((0, 0, 0), (z - 1, y - 1, x - 1), size=(n, 3))
        self.codes = rng.integers(0, len(codewords), size=n)
        self.seed = seed

    def truth(self):
        """The molecules as the ground truth table :func:`merfishflow.evaluation.spots.score_spots` takes (pixels)."""
        import pandas as pd

        return pd.DataFrame({"spot_id": np.arange(len(self.codes)), "tile": 0, "gene_id": self.codes,
                             "z_px": self.centres[:, 0], "y_px": self.centres[:, 1], "x_px": self.centres[:, 2]})

    def __call__(self, z0, z1, window=None, out=None):
        if window is not None:
            y0, y1, x0, x1 = window
            return np.ascontiguousarray(self(z0, z1)[:, :, y0:y1, x0:x1])
        _, y, x = self.shape
        out = np.empty((N_BITS, z1 - z0, y, x), np.float32)
        for k, z in enumerate(range(z0, z1)):
            rng = np.random.default_rng([self.seed, z])
            plane = rng.standard_normal((N_BITS, y, x), dtype=np.float32)
            plane *= np.float32(np.sqrt(20.0))
            plane += np.float32(20.0)
            out[:, k] = plane
        # Spots within 4 planes of the slab.
        near = np.abs(self.centres[:, 0] - (z0 + z1 - 1) / 2) <= (z1 - z0) / 2 + 4
        r = 5
        for (cz, cy, cx), code in zip(self.centres[near], self.codes[near]):
            iz, iy, ix = int(round(cz)), int(round(cy)), int(round(cx))
            zs = np.arange(max(z0, iz - 3), min(z1, iz + 4))
            ys = np.arange(max(0, iy - r), min(y, iy + r + 1))
            xs = np.arange(max(0, ix - r), min(x, ix + r + 1))
            if zs.size == 0:
                continue
            blob = 600 * np.exp(-(zs[:, None, None] - cz) ** 2 / 2
                                - ((ys[None, :, None] - cy) ** 2 + (xs[None, None, :] - cx) ** 2) / 4.5)
            for b in np.flatnonzero(self.codewords[code]):
                out[b, zs[0] - z0:zs[-1] - z0 + 1, ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1] += blob.astype(np.float32)
        return out


def time_sgemm(n_pixels, n_codewords, chunk, repeats):
    """Seconds per repeat of the (pixels x bits) @ (bits x codewords) products in chunks: without and with
    the argmax that picks each pixel's codeword."""
    rng = np.random.default_rng(1)
    a = rng.random((chunk, N_BITS), dtype=np.float32)
    c = rng.random((N_BITS, n_codewords), dtype=np.float32)
    # The product goes into one preallocated array: a fresh 2^16 x 140 float32 result (37 MB, above glibc's
    # mmap threshold) is new memory at every chunk, and its page faults added ~30 % and most of the run-to-run
    # spread to this bound (6.4-7.4 s against 4.7-4.8 s for 16 x 2048^2 pixels, one thread).
    out = np.empty((chunk, n_codewords), np.float32)

    def timed(product):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for done in range(0, n_pixels, chunk):
                product(a[:min(chunk, n_pixels - done)])
            times.append(time.perf_counter() - t0)
        return times

    with_argmax = timed(lambda rows: np.matmul(rows, c, out=out[:len(rows)]).argmax(axis=1))
    plain = timed(lambda rows: np.matmul(rows, c, out=out[:len(rows)]))
    return plain, with_argmax


def throughput(shape, repeats):
    from threadpoolctl import threadpool_info, threadpool_limits

    from merfishflow.spots.decoding import (DecodingParams, _n_threads, _refinement_window, _sigmas_px, array_reader,
                                      decode_tile, enhance_bits)

    cw = codebook()
    reader = SyntheticTile(shape, cw)
    params = DecodingParams()
    threads = _n_threads(params, N_BITS)
    blas_threads = max([p.get("num_threads", 1) for p in threadpool_info() if p.get("user_api") == "blas"] or [1])
    n_vox = int(np.prod(shape))
    # Pre-generate the slabs so that generating the synthetic data is not timed.
    sig = _sigmas_px(params, VOXEL)
    stack = reader(0, shape[0])

    read_time = [0.0]
    copy = array_reader(stack)

    def read(z0, z1, window=None, out=None):
        t0 = time.perf_counter()
        out = copy(z0, z1, window, out=out)
        read_time[0] += time.perf_counter() - t0
        return out

    # A tile that fits is read and filtered whole (one pass); else its refinement crop (with the filters'
    # y/x halo), then the whole tile in slabs.
    whole = n_vox <= params.whole_tile_max_voxels
    _, (wy0, wy1, wx0, wx1) = _refinement_window(shape, params.refine_max_voxels, sig, params.truncate)
    crop_share = 0.0 if whole else (wy1 - wy0) * (wx1 - wx0) / (shape[1] * shape[2])
    step = shape[0] if whole else params.slab_planes
    halo = 0 if whole else sig["halo_z"]
    t_read = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for z0 in range(0, shape[0], step):
            z1 = min(shape[0], z0 + step)
            read(max(0, z0 - halo), min(shape[0], z1 + halo))
        t_read.append(time.perf_counter() - t0)
    t_filter = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for z0 in range(0, shape[0], step):
            z1 = min(shape[0], z0 + step)
            a, b = max(0, z0 - halo), min(shape[0], z1 + halo)
            enhance_bits(read(a, b), (z0 - a, z1 - a), sig, params.truncate, threads)
        t_filter.append(time.perf_counter() - t0)
    # Interleaved, so that load from other processes hits the decoder and its yardstick alike.
    t_decode, t_decode1, sgemm, sgemm_argmax, sgemm1, result = [], [], [], [], [], None
    t_read_in, t_read_in1 = [], []
    single = DecodingParams(n_threads=1)
    for _ in range(repeats):
        read_time[0] = 0.0
        t0 = time.perf_counter()
        result = decode_tile(read, shape, cw, VOXEL, params)
        t_decode.append(time.perf_counter() - t0)
        t_read_in.append(read_time[0])
        g, ga = time_sgemm(n_vox, len(cw), params.chunk_pixels, 1)
        sgemm += g
        sgemm_argmax += ga
        read_time[0] = 0.0
        t0 = time.perf_counter()
        decode_tile(read, shape, cw, VOXEL, single)
        t_decode1.append(time.perf_counter() - t0)
        t_read_in1.append(read_time[0])
        with threadpool_limits(limits=1, user_api="blas"):
            sgemm1 += time_sgemm(n_vox, len(cw), params.chunk_pixels, 1)[0]
    med = _common.median
    d, d1, f, r = med(t_decode), med(t_decode1), med(t_filter), med(t_read)
    g, ga, g1 = med(sgemm), med(sgemm_argmax), med(sgemm1)
    passes = 1 + crop_share
    from merfishflow.evaluation.spots import score_spots

    spots = result.spots.rename(columns={"barcode_id": "gene_id"}).assign(tile=0)
    accuracy = score_spots(spots, reader.truth(), VOXEL)["overall"]
    return {
        "shape": list(shape), "n_bits": N_BITS, "n_codewords": len(cw), "n_voxels": n_vox,
        "n_true_spots": len(reader.codes), "n_decoded": int(len(result.spots)),
        "iterations": len(result.history) - 1, "converged": result.converged, "filter_passes": passes,
        "precision": accuracy["precision"], "recall": accuracy["recall"], "f1": accuracy["f1"],
        "refine_max_voxels": params.refine_max_voxels, "whole_tile_max_voxels": params.whole_tile_max_voxels,
        "filter_threads": threads, "blas_threads": blas_threads,
        "decode_s": t_decode, "decode_1thread_s": t_decode1, "decode_read_bits_s": t_read_in,
        "decode_1thread_read_bits_s": t_read_in1,
        "ratio_decode_to_sgemm_1thread_excl_read":
            med([a - b for a, b in zip(t_decode1, t_read_in1)]) / g1, "filter_pass_s": t_filter, "read_copy_s": t_read,
        "sgemm_s": sgemm, "sgemm_argmax_s": sgemm_argmax, "sgemm_1thread_s": sgemm1,
        "decode_mvox_s": n_vox / d / 1e6, "sgemm_mvox_s": n_vox / g / 1e6,
        "ratio_decode_to_sgemm": d / g, "ratio_decode_to_sgemm_argmax": d / ga,
        "ratio_decode_to_sgemm_1thread": d1 / g1,
        "filters_share": passes * (f - r) / d, "read_copy_share": passes * r / d,
    }


MEMORY_CHILD = r"""
import resource, sys, json
sys.path.insert(0, {bench!r})
import numpy as np
import bench_decoding as bd
from merfishflow.spots.decoding import DecodingParams, decode_tile
mode, z = sys.argv[1], int(sys.argv[2])
if mode == "decode":
    cw = bd.codebook()
    shape = (z, 2048, 2048)
    result = decode_tile(bd.SyntheticTile(shape, cw), shape, cw, bd.VOXEL, DecodingParams())
    print(json.dumps({{"n_spots": len(result.spots)}}))
"""


def peak_rss_mb(mode, z):
    """ru_maxrss of one child run from a minimal parent (so the parent's own RSS is not counted)."""
    bench = str(Path(__file__).resolve().parent)
    child = MEMORY_CHILD.format(bench=bench)
    parent = ("import resource, subprocess, sys\n"
              f"r = subprocess.run([sys.executable, '-c', {child!r}, {mode!r}, '{z}'], capture_output=True, text=True)\n"
              "sys.stderr.write(r.stderr[-2000:])\n"
              "print(r.stdout.strip().splitlines()[-1] if r.stdout.strip() else '{}')\n"
              "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, check=True)
    lines = out.stdout.strip().splitlines()
    return {"peak_rss_mb": int(lines[-1]) / 1024, "info": json.loads(lines[-2]), "seconds": time.perf_counter() - t0}


def memory(zs):
    base = peak_rss_mb("imports", 0)
    rows = []
    for z in zs:
        run = peak_rss_mb("decode", z)
        input_mb = 4 * N_BITS * z * 2048 * 2048 / 1e6
        rows.append({"z": z, "input_float32_mb": input_mb, "baseline_mb": base["peak_rss_mb"],
                     "peak_mb": run["peak_rss_mb"], "increase_mb": run["peak_rss_mb"] - base["peak_rss_mb"],
                     "seconds": run["seconds"], "n_spots": run["info"].get("n_spots")})
    return rows


def report(info, tp, mem, command):
    lines = ["", "---------------------------------------------------------------------------------------------------",
             "", "## Pixel decoding (`bench_decoding.py`)", "",
             f"**Machine:** {_common.machine_line(info)}. Load average at the end: {_common.load_average()} "
             "(machine shared with another engineer).", "", f"**Command:** `{command}`", ""]
    if tp:
        lines += [
            f"**Throughput**, synthetic tile {tp['shape']} x {tp['n_bits']} bits, {tp['n_codewords']} codewords, "
            f"{tp['n_true_spots']} molecules ({tp['n_decoded']} decoded, {tp['iterations']} normalization "
            f"iterations, converged {tp['converged']}), default `DecodingParams`:", "",
            "| measurement | seconds (each repeat) | Mvoxel/s |", "|---|---|---|",
            f"| `decode_tile` ({tp['filter_threads']} filter threads) | "
            f"{', '.join(f'{v:.2f}' for v in tp['decode_s'])} | {tp['decode_mvox_s']:.2f} |",
            f"| sgemm bound: ({tp['n_voxels']} x 16) @ (16 x {tp['n_codewords']}) float32, chunked "
            f"({tp['blas_threads']} BLAS threads) | {', '.join(f'{v:.2f}' for v in tp['sgemm_s'])} | "
            f"{tp['sgemm_mvox_s']:.2f} |",
            f"| same + argmax | {', '.join(f'{v:.2f}' for v in tp['sgemm_argmax_s'])} | - |",
            f"| `decode_tile`, 1 thread | {', '.join(f'{v:.2f}' for v in tp['decode_1thread_s'])} | - |",
            f"| of which in `read_bits` (the benchmark's copy of the tile) | "
            f"{', '.join(f'{v:.2f}' for v in tp['decode_1thread_read_bits_s'])} | - |",
            f"| sgemm bound, 1 BLAS thread | {', '.join(f'{v:.2f}' for v in tp['sgemm_1thread_s'])} | - |",
            f"| one DoG filter pass (incl. read copy) | {', '.join(f'{v:.2f}' for v in tp['filter_pass_s'])} | - |",
            f"| read copy alone | {', '.join(f'{v:.2f}' for v in tp['read_copy_s'])} | - |", "",
            f"**Ratio decode / sgemm bound = {tp['ratio_decode_to_sgemm']:.2f}** "
            f"(/ sgemm+argmax: {tp['ratio_decode_to_sgemm_argmax']:.2f}; both single-threaded: "
            f"{tp['ratio_decode_to_sgemm_1thread']:.2f}; single-threaded without the time in `read_bits`: "
            f"{tp['ratio_decode_to_sgemm_1thread_excl_read']:.2f}); target <= 2. "
            f"F1 against the synthetic molecules {tp['f1']:.3f} (P {tp['precision']:.3f}, R {tp['recall']:.3f}). "
            f"Filters ({tp['filter_passes']} pass(es)) = {100 * tp['filters_share']:.0f} % of the decode time, "
            f"slab copies {100 * tp['read_copy_share']:.0f} %.", ""]
    if mem:
        lines += ["**Peak memory**, Z x 2048 x 2048 x 16 bits, `read_bits` generating planes on demand, "
                  "default `DecodingParams` (slab_planes 8, z halo 3, refinement crop 2^22 voxels):", "",
                  "| Z | float32 input MB | baseline RSS MB (imports) | peak RSS MB | increase MB | seconds |",
                  "|---|---|---|---|---|---|"]
        for row in mem:
            lines.append(f"| {row['z']} | {row['input_float32_mb']:.0f} | {row['baseline_mb']:.0f} | "
                         f"{row['peak_mb']:.0f} | **{row['increase_mb']:.0f}** | {row['seconds']:.0f} |")
        lines.append("")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=(16, 1024, 1024))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-z", type=int, nargs="*", default=[8, 24])
    parser.add_argument("--no-throughput", action="store_true")
    parser.add_argument("--append", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    info = _common.machine_info()
    tp = None if args.no_throughput else throughput(tuple(args.shape), args.repeats)
    if tp:
        print(json.dumps(tp, indent=1))
    mem = memory(args.memory_z) if args.memory_z else []
    for row in mem:
        print(json.dumps(row))
    if args.json:
        Path(args.json).write_text(json.dumps({"throughput": tp, "memory": mem, "machine": info}, indent=1))
    text = report(info, tp, mem, "python benchmarks/bench_decoding.py " + " ".join(sys.argv[1:]))
    print(text)
    if args.append:
        with RESULTS.open("a") as f:
            f.write(text)


if __name__ == "__main__":
    main()

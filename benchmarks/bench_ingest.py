"""Benchmark of the ingest + correct stage against the machine's own write limits.

Measures, in one run on one synthetic experiment (``docs/raw_data.md``
layout, Poisson camera counts, 0.1 % hot pixels in the dark frame):

1. **Throughput** of ``run_ingest`` (``merfishflow.stages.ingest``,
   formerly ``merfishflow.ingest``) in MB/s of
   raw TIFF bytes (1 MB = 10**6 B), against the *baseline*: writing the same
   uint16 arrays (``camera_data`` and ``corrected_data`` of every channel,
   same shapes, chunking and blosc-zstd compression, created through
   :func:`merfishflow.io.datastore.create_array`) with tensorstore alone, from
   memory, in the same slab pattern as the ingest job. The ratio
   ingest / baseline has a target of >= 0.7. For context, the disk's own
   write throughput (plain ``write`` + ``fsync`` of the same byte count) and
   a breakdown of one ingest (TIFF read, correction) are reported too.
   Each measurement is repeated ``--repeats`` times; medians are reported.
2. **Peak memory** of one ingest job: the peak RSS of a subprocess that runs
   one ingest, minus the peak RSS of a subprocess that only imports the same
   modules (both read as ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` in a
   minimal parent process that only starts that one child), divided by
   one tile-round's raw bytes. Target: <= 3. Measured for the base tile,
   for tiles 2x larger along z and along y, and for a thin tile of only
   ``slab_planes`` z-planes (the job's memory follows the slab, Y x X x
   slab_planes, not the tile, so that is where the ratio is largest).

Usage
-----
    python benchmarks/bench_ingest.py                       # 3 x 32 x 1024 x 1024 tile (~201 MB)
    python benchmarks/bench_ingest.py --shape 16 512 512 --repeats 1   # quick check

Everything is written under a temporary folder (``--tmpdir``, default the
system's) that is deleted at the end. The raw TIFF is read back from the page
cache (it was just written), so the ingest number is the best case for the
read side; the baseline does no reading at all.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

MB = 1e6
TILE, ROUND = "tile0000", "round0000"
# What an ingest job imports (numpy, tifffile, tensorstore, the stage module and what it
# imports); the memory baseline imports exactly these.
THIRD_PARTY = ("numpy", "tifffile", "tensorstore")


# setup -----------------------------------------------------------------------------------------
def make_experiment(root: Path, shape_zyx, seed: int) -> int:
    """raw_data for one tile (8 rounds listed, round 0 has a TIFF), then run_init; returns raw bytes."""
    run_init = _common.stage_module("init").run_init

    _common.write_metadata(root, shape_zyx=shape_zyx, n_tiles=1, n_rounds=8, dark_frame=True, seed=seed)
    raw_bytes = _common.write_raw_tiff(root / "raw_data" / TILE / f"{ROUND}.tif", shape_zyx, seed=seed + 1)
    run_init(root, progress=lambda msg: None)
    return raw_bytes


def run_ingest(root: Path, slab_planes: int):
    stage = _common.stage_module("ingest")
    return stage.run_ingest(root, TILE, ROUND, [0.0, 0.0, 0.0], stage.CorrectionParams(), progress=lambda msg: None,
                             slab_planes=slab_planes)


# measurements ----------------------------------------------------------------------------------
def time_ingest(root: Path, slab_planes: int) -> tuple[float, float]:
    """(wall s, CPU s of this process, all threads) of one ingest."""
    t0, c0 = time.perf_counter(), time.process_time()
    run_ingest(root, slab_planes)
    return time.perf_counter() - t0, time.process_time() - c0


def load_written_arrays(groups) -> list:
    """``[(relative name, camera_data, corrected_data)]`` read back from the ingest's groups."""
    from merfishflow.io import datastore

    return [(g, datastore.read_array(g, "camera_data"), datastore.read_array(g, "corrected_data")) for g in groups]


def time_tensorstore_write(out_dir: Path, arrays, slab_planes: int) -> tuple[float, float]:
    """Write every (camera, corrected) pair with tensorstore only, in the ingest's slab pattern: (wall s, CPU s)."""
    from merfishflow.io import datastore

    if out_dir.exists():
        shutil.rmtree(out_dir)
    t0, c0 = time.perf_counter(), time.process_time()
    for i, (_, camera_data, corrected_data) in enumerate(arrays):
        group = datastore.create_group(out_dir / f"group{i}.zarr")
        z = camera_data.shape[0]
        camera = datastore.create_array(group / "camera_data", camera_data.shape, np.uint16)
        corrected = datastore.create_array(group / "corrected_data", corrected_data.shape, np.uint16)
        for z0 in range(0, z, slab_planes):
            z1 = min(z, z0 + slab_planes)
            w1 = camera[z0:z1].write(camera_data[z0:z1])
            w2 = corrected[z0:z1].write(corrected_data[z0:z1])
            w1.result()
            w2.result()
    return time.perf_counter() - t0, time.process_time() - c0


def time_disk_write(path: Path, n_bytes: int, block=16 * 2**20) -> float:
    """Plain ``write`` of ``n_bytes`` in 16 MiB blocks, then ``fsync``; the file is deleted."""
    rng = np.random.default_rng(0)
    buf = rng.integers(0, 2**16, size=block // 2, dtype=np.uint16).tobytes()
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        left = n_bytes
        while left > 0:
            left -= os.write(fd, buf[: min(block, left)])
        os.fsync(fd)
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - t0
    path.unlink()
    return elapsed


def ingest_breakdown(root: Path, slab_planes: int) -> dict:
    """Seconds spent in the ingest's parts when run alone: TIFF read, sha256, correction."""
    import hashlib

    import tifffile

    from merfishflow.io import datastore
    from merfishflow.image.correction import correct_counts, find_hot_pixels, neighbour_index, to_uint16
    from merfishflow.io.paths import ExperimentPaths

    paths = ExperimentPaths(root)
    noise = datastore.read_array(paths.calibrations, "camera_noise_map")
    hot = find_hot_pixels(noise[0], 10.0, known=noise[2] > 0)
    hot_flat, neighbours = neighbour_index(hot, 1)
    offset, gain = noise[0], float(noise[1].flat[0])
    out = {"tiff_read": 0.0, "sha256": 0.0, "correct": 0.0, "to_uint16": 0.0, "n_hot_pixels": int(len(hot_flat))}
    digest = hashlib.sha256()
    with tifffile.TiffFile(paths.raw_tiff(TILE, ROUND)) as tif:
        n_pages = len(tif.pages)
        z = int(datastore.read_marker(paths.calibrations)["image_shape_zyx"][0])
        for first in range(0, n_pages, slab_planes):
            t0 = time.perf_counter()
            counts = tif.asarray(key=range(first, min(n_pages, first + slab_planes, (first // z + 1) * z)))
            t1 = time.perf_counter()
            digest.update(np.ascontiguousarray(counts).data)
            t2 = time.perf_counter()
            electrons = correct_counts(counts, offset, gain, hot_flat, neighbours)
            t3 = time.perf_counter()
            to_uint16(electrons)
            t4 = time.perf_counter()
            out["tiff_read"] += t1 - t0
            out["sha256"] += t2 - t1
            out["correct"] += t3 - t2
            out["to_uint16"] += t4 - t3
    return out


# peak memory: _common.child_peak_rss_kib runs this script as a child of a minimal meter.
def child_peak_rss_kib(args) -> int:
    """Peak RSS in KiB of ``python <this file> <args>`` (see ``_common.child_peak_rss_kib``)."""
    return _common.child_peak_rss_kib(__file__, args)


def measure_memory(tmp: Path, shape_zyx, slab_planes: int, repeats: int, seed: int) -> dict:
    root = tmp / ("mem_" + "x".join(map(str, shape_zyx)))
    raw_bytes = make_experiment(root, shape_zyx, seed)
    base = [child_peak_rss_kib(["--child", "imports"]) for _ in range(repeats)]
    peak = [child_peak_rss_kib(["--child", "ingest", "--root", str(root), "--slab-planes", str(slab_planes)])
            for _ in range(repeats)]
    shutil.rmtree(root)
    increase = (max(peak) - min(base)) * 1024
    return {"shape_czyx": [len(_common.CHANNELS), *shape_zyx], "raw_bytes": raw_bytes,
            "baseline_rss_bytes": min(base) * 1024, "ingest_peak_rss_bytes": max(peak) * 1024,
            "increase_bytes": increase, "ratio": increase / raw_bytes}


def run_child(args) -> None:
    import importlib

    for name in THIRD_PARTY:
        importlib.import_module(name)
    _common.stage_module("ingest")
    if args.child == "ingest":
        run_ingest(Path(args.root), args.slab_planes)


# report ----------------------------------------------------------------------------------------
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=[32, 1024, 1024], metavar=("Z", "Y", "X"),
                        help="image_shape_zyx of the tile (3 channels); default 32 1024 1024 (~201 MB raw)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each throughput measurement")
    parser.add_argument("--memory-repeats", type=int, default=1, help="repeats of each peak-memory measurement")
    parser.add_argument("--slab-planes", type=int, default=8, help="ingest slab_planes (config ingest.slab_planes)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--tmpdir", default=None, help="where to create the temporary experiments")
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    parser.add_argument("--child", choices=["imports", "ingest"], help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return run_child(args)

    info = _common.machine_info()
    shape = tuple(args.shape)
    results = {"machine": info, "shape_zyx": list(shape), "slab_planes": args.slab_planes}
    with tempfile.TemporaryDirectory(prefix="merfishflow-bench-ingest-", dir=args.tmpdir) as tmp:
        tmp = Path(tmp)
        root = tmp / "experiment"
        t0 = time.perf_counter()
        raw_bytes = make_experiment(root, shape, args.seed)
        print(f"setup: {raw_bytes / MB:.1f} MB raw tile-round written and initialised in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)

        # Warm-up ingest (imports, first-touch allocations) and the arrays the baseline writes.
        groups = run_ingest(root, args.slab_planes)
        arrays = load_written_arrays(groups)
        stored = sum(f.stat().st_size for g in groups for f in g.rglob("*") if f.is_file())
        results["breakdown_s"] = ingest_breakdown(root, args.slab_planes)

        load = [_common.load_average()]
        ingest_s, baseline_s, disk_s, ingest_cpu, baseline_cpu = [], [], [], [], []
        for i in range(args.repeats):
            wall, cpu = time_ingest(root, args.slab_planes)
            ingest_s.append(wall)
            ingest_cpu.append(cpu)
            wall, cpu = time_tensorstore_write(tmp / "baseline", arrays, args.slab_planes)
            baseline_s.append(wall)
            baseline_cpu.append(cpu)
            disk_s.append(time_disk_write(tmp / "disk.bin", raw_bytes))
            load.append(_common.load_average())
            print(f"repeat {i + 1}: ingest {ingest_s[-1]:.2f} s, tensorstore-only {baseline_s[-1]:.2f} s, "
                  f"disk write+fsync {disk_s[-1]:.2f} s", flush=True)
        del arrays
        shutil.rmtree(tmp / "baseline", ignore_errors=True)
        results["throughput"] = {
            "raw_bytes": raw_bytes, "stored_bytes": stored,
            "ingest_s": ingest_s, "baseline_s": baseline_s, "disk_s": disk_s, "load_average": load,
            "ingest_cpu_s": ingest_cpu, "baseline_cpu_s": baseline_cpu,
            "paired_ratios": [b / i for i, b in zip(ingest_s, baseline_s)],
            "ingest_mb_s": raw_bytes / MB / _common.median(ingest_s),
            "baseline_mb_s": raw_bytes / MB / _common.median(baseline_s),
            "disk_mb_s": raw_bytes / MB / _common.median(disk_s),
        }
        results["throughput"]["ratio"] = results["throughput"]["ingest_mb_s"] / results["throughput"]["baseline_mb_s"]
        shutil.rmtree(root)

        if not args.no_memory:
            z, y, x = shape
            cases = {"base": shape, "2x z": (2 * z, y, x), "2x y": (z, 2 * y, x),
                     "thin (Z = slab_planes)": (min(z, args.slab_planes), y, x)}
            results["memory"] = []
            for label, s in cases.items():
                results["memory"].append(measure_memory(tmp, s, args.slab_planes, args.memory_repeats, args.seed))
                results["memory"][-1]["case"] = label
            for m in results["memory"]:
                print(f"memory {m['shape_czyx']}: +{m['increase_bytes'] / MB:.0f} MB = {m['ratio']:.2f} x raw",
                      flush=True)

    print()
    print(report(results, args))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


def report(r: dict, args) -> str:
    t = r["throughput"]
    c = len(_common.CHANNELS)
    z, y, x = r["shape_zyx"]
    lines = [
        f"Machine: {_common.machine_line(r['machine'])}",
        f"Tile-round: {c} channels x {z} x {y} x {x} uint16 = {t['raw_bytes'] / MB:.1f} MB raw "
        f"(stored {t['stored_bytes'] / MB:.1f} MB compressed for camera_data + corrected_data), "
        f"slab_planes={r['slab_planes']}, {len(t['ingest_s'])} repeats (median).",
        "",
        "| measurement | seconds (each repeat) | MB/s of raw data (median) |",
        "|---|---|---|",
        f"| ingest + correct (`run_ingest`) | {', '.join(f'{s:.2f}' for s in t['ingest_s'])} | "
        f"{t['ingest_mb_s']:.1f} |",
        f"| baseline: tensorstore-only write of the same arrays | {', '.join(f'{s:.2f}' for s in t['baseline_s'])} | "
        f"{t['baseline_mb_s']:.1f} |",
        f"| disk: write + fsync of the same byte count | {', '.join(f'{s:.2f}' for s in t['disk_s'])} | "
        f"{t['disk_mb_s']:.1f} |",
        "",
        f"**Ratio ingest / baseline = {t['ratio']:.2f}** (target >= 0.7: "
        f"{'met' if t['ratio'] >= 0.7 else 'NOT met'}). Per-repeat ratios (baseline s / ingest s of the same "
        f"repeat): {', '.join(f'{x:.2f}' for x in t['paired_ratios'])}; median "
        f"{_common.median(t['paired_ratios']):.2f}.",
        f"CPU seconds of the process (all threads; insensitive to other load): ingest "
        f"{', '.join(f'{x:.2f}' for x in t['ingest_cpu_s'])}, baseline "
        f"{', '.join(f'{x:.2f}' for x in t['baseline_cpu_s'])}; CPU ratio baseline / ingest = "
        f"{_common.median(t['baseline_cpu_s']) / _common.median(t['ingest_cpu_s']):.2f}.",
        f"Load average (1/5/15 min) before the first repeat and after each: {'; '.join(t['load_average'])}.",
    ]
    b = r["breakdown_s"]
    lines += ["", f"Breakdown of one ingest's CPU work outside tensorstore (run alone, {b['n_hot_pixels']} hot pixels): "
              f"TIFF read {b['tiff_read']:.2f} s, sha256 {b['sha256']:.2f} s, correct_counts {b['correct']:.2f} s, "
              f"to_uint16 {b['to_uint16']:.2f} s."]
    if "memory" in r:
        lines += ["", "| case | tile-round (C, Z, Y, X) | raw MB | baseline RSS MB (imports only) | ingest peak RSS MB | "
                  "increase MB | increase / raw |", "|---|---|---|---|---|---|---|"]
        for m in r["memory"]:
            lines.append(f"| {m['case']} | {tuple(m['shape_czyx'])} | {m['raw_bytes'] / MB:.1f} | {m['baseline_rss_bytes'] / MB:.0f} | "
                         f"{m['ingest_peak_rss_bytes'] / MB:.0f} | {m['increase_bytes'] / MB:.0f} | "
                         f"**{m['ratio']:.2f}** |")
        worst = max(m["ratio"] for m in r["memory"])
        lines += ["", f"Worst peak/raw = {worst:.2f} (target <= 3: {'met' if worst <= 3 else 'NOT met'})."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""Benchmark of :func:`merfishflow.image.deconvolution.richardson_lucy` against the FFT it is built on.

Measures, in one run:

1. **Iteration cost**: one Richardson–Lucy iteration on one realistic padded
   block (the block :func:`richardson_lucy` itself builds for a
   ``--block`` interior core, default 100 x 512 x 512 with ``tile_yx=512``
   and the default overlap, for the PSF of the longest readout emission, 0.68 µm),
   against the *baseline*: four forward real FFTs (``scipy.fft.rfftn``,
   same worker count) of the same padded float32 block, timed in the same
   run, alternating with the iterations (each repeat times both back to
   back; the ratio reported is the median of the per-repeat ratios). An
   iteration needs two forward and two inverse real FFTs plus element-wise
   work; target ratio <= 1.5.
   Reported also as Mvox/s (padded-block voxels and core voxels per second
   per iteration). Repeated ``--repeats`` times; medians.
2. **Peak memory** of deconvolving one ``--memory-shape`` uint16 tile
   (default 100 x 2048 x 2048) with ``tile_yx`` / ``--iterations`` (default
   512, 2): the peak RSS of a subprocess that builds the input and
   deconvolves it, minus the peak RSS of a subprocess that only imports the
   same modules (``getrusage(RUSAGE_CHILDREN).ru_maxrss`` read in a minimal
   parent that starts only that child). Target <= 6 GB. Compared with
   :func:`richardson_lucy_peak_bytes`.
3. **Whole volume per backend** (``--volume Z Y X``, off by default): the deconvolve stage's own
   call (:class:`~merfishflow.stages.deconvolve.DeconvolutionParams` defaults: iterations,
   acceleration, z boundary) on one synthetic volume, for each ``--xp`` backend (``numpy``,
   ``cupy``) and each ``--volume-tiles`` tile_yx, host transfers included, against the same
   backend's block transform pair (forward + inverse, as ``richardson_lucy`` runs them, timed in
   the same run): ratio = wall / (blocks x iterations x 2 pairs). The cupy results are compared
   with numpy's (largest difference relative to the image maximum).

Usage
-----
    python benchmarks/bench_deconvolution.py                          # both parts, ~4-6 min on 2 cores
    python benchmarks/bench_deconvolution.py --no-memory --repeats 2  # iteration cost only
    python benchmarks/bench_deconvolution.py --memory-shape 50 2048 2048
    python benchmarks/bench_deconvolution.py --no-iteration --no-memory --volume 9 1024 1024 --xp numpy cupy

Nothing is written except ``--json`` (if given).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

GB = 1e9
VOXEL_UM = (0.31, 0.108, 0.108)
EMISSION_UM, NA, RI = 0.68, 1.3, 1.4
IMPORTS = "import numpy, scipy.fft, merfishflow.image.deconvolution, merfishflow.image.psf"


def make_psf():
    from merfishflow.image.psf import widefield_psf

    return widefield_psf(VOXEL_UM, EMISSION_UM, NA, RI)


def synthetic_image(shape_zyx, seed=0) -> np.ndarray:
    """uint16 camera-like counts (background ~100 plus sparse bright voxels), built plane by plane."""
    rng = np.random.default_rng(seed)
    image = np.empty(shape_zyx, dtype=np.uint16)
    for plane in image:
        plane[...] = rng.integers(90, 110, size=plane.shape, dtype=np.uint16)
        spots = rng.random(plane.shape) < 1e-4
        plane[spots] += rng.integers(500, 5000, size=int(spots.sum()), dtype=np.uint16)
    return image


# 1. iteration cost -----------------------------------------------------------------------------
def time_iteration(block_zyx, repeats, iterations_per_repeat, workers, seed):
    import scipy.fft as sfft

    from merfishflow.image import deconvolution as dc

    psf = dc._check_psf(make_psf())
    # The padded block exactly as richardson_lucy builds it for an interior core of a tiled image.
    zb, yb, xb, fft_shape = _tiled_geometry(dc, block_zyx, psf.shape)
    backend = dc._NumpyBackend(workers)
    image = synthetic_image(block_zyx, seed).astype(np.float32)
    # (its margins are filled by reflecting the core: the content does not change the timing)
    z, y, x = block_zyx
    pads = [(c0 - b.start, b.stop - c0 - n) for b, c0, n in zip((zb, yb, xb), (0, y, x), block_zyx)]
    data = np.ascontiguousarray(np.pad(image, pads, mode="reflect"), dtype=np.float32)
    assert data.shape == tuple(fft_shape), (data.shape, fft_shape)
    mean = float(image.mean())
    eps, init = np.float32(1e-6 * mean), np.float32(mean)
    otfs = dc._otf(psf, fft_shape, backend)
    sfft.rfftn(data, workers=workers)          # warm-up: plans, first-touch
    dc._rl_block(data, otfs, init, eps, 1, None, backend)

    fft4, it, it_tol = [], [], []
    for r in range(repeats):
        t0 = time.perf_counter()
        for _ in range(4):
            spec = sfft.rfftn(data, workers=workers)
            del spec
        fft4.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        est, *_ = dc._rl_block(data, otfs, init, eps, iterations_per_repeat, None, backend)
        it.append((time.perf_counter() - t0) / iterations_per_repeat)
        del est
        t0 = time.perf_counter()
        est, n, _ = dc._rl_block(data, otfs, init, eps, iterations_per_repeat, 1e-12, backend)
        it_tol.append((time.perf_counter() - t0) / n)
        del est
        print(f"repeat {r + 1}: 4 x rfftn {fft4[-1]:.2f} s, RL iteration {it[-1]:.2f} s "
              f"(with stop_tolerance {it_tol[-1]:.2f} s), ratio {it[-1] / fft4[-1]:.2f}", flush=True)
    padded = int(np.prod(fft_shape))
    core = int(np.prod(block_zyx))
    med_it = _common.median(it)
    return {"block_zyx": list(block_zyx), "tile_yx": list(block_zyx[1:]), "fft_shape_zyx": list(fft_shape), "workers": workers,
            "psf_shape_zyx": list(psf.shape), "iterations_per_repeat": iterations_per_repeat,
            "fft4_s": fft4, "iteration_s": it, "iteration_tol_s": it_tol,
            "paired_ratios": [i / f for i, f in zip(it, fft4)],
            "ratio": _common.median([i / f for i, f in zip(it, fft4)]),
            "ratio_of_medians": med_it / _common.median(fft4), "ratio_of_minima": min(it) / min(fft4),
            "padded_mvox_s": padded / 1e6 / med_it, "core_mvox_s": core / 1e6 / med_it}


def _tiled_geometry(dc, block_zyx, psf_shape):
    """Geometry of the interior block of a 3 x 3-core image tiled by ``tile_yx`` = the block's (y, x)."""
    z, y, x = block_zyx
    zb, yb, xb, fft_shape = dc._plan((z, 3 * y, 3 * x), psf_shape, (y, x), None)
    return zb, yb[1], xb[1], fft_shape


# 2. peak memory --------------------------------------------------------------------------------
def child_peak_rss_kib(args) -> int:
    """Peak RSS in KiB of ``python <this file> <args>`` (see ``_common.child_peak_rss_kib``)."""
    return _common.child_peak_rss_kib(__file__, args)


def measure_memory(shape_zyx, tile, iterations, workers):
    from merfishflow.image.deconvolution import richardson_lucy_peak_bytes

    psf_shape = make_psf().shape
    base = child_peak_rss_kib(["--child", "imports"]) * 1024
    t0 = time.perf_counter()
    peak = child_peak_rss_kib(["--child", "deconvolve", "--memory-shape", *map(str, shape_zyx),
                               "--tile", str(tile), "--iterations", str(iterations),
                               "--workers", str(workers)]) * 1024
    wall = time.perf_counter() - t0
    nvox = int(np.prod(shape_zyx))
    return {"shape_zyx": list(shape_zyx), "tile_yx": tile, "iterations": iterations, "wall_s": wall,
            "input_bytes": 2 * nvox, "output_bytes": 4 * nvox,
            "baseline_rss_bytes": base, "peak_rss_bytes": peak, "increase_bytes": peak - base,
            "estimate_bytes": richardson_lucy_peak_bytes(shape_zyx, psf_shape, tile)}


def run_child(args) -> None:
    exec(IMPORTS, {})
    if args.child == "deconvolve":
        from merfishflow.image.deconvolution import richardson_lucy

        image = synthetic_image(tuple(args.memory_shape))
        out = richardson_lucy(image, make_psf(), args.iterations, tile_yx=args.tile, workers=args.workers)
        assert out.dtype == np.float32 and out.shape == image.shape


# 3. whole volume per backend ---------------------------------------------------------------------
def _synchronize(backend):
    if backend.name == "cupy":
        backend.xp.cuda.Device().synchronize()


def time_transform_pair(dc, backend, fft_shape, repeats=5) -> float:
    """Seconds of the fastest of ``repeats`` forward + inverse block transform pairs on ``backend``."""
    block = backend.to_device(np.random.default_rng(0).random(fft_shape, dtype=np.float32))
    backend.inverse(backend.forward(block), fft_shape)       # warm-up: plans, first touch
    _synchronize(backend)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        backend.inverse(backend.forward(block), fft_shape)
        _synchronize(backend)
        seconds.append(time.perf_counter() - start)
    return min(seconds)


def time_volume(shape_zyx, backends, tiles, workers, seed, repeats=2) -> list:
    """One row per (backend, tile_yx): wall seconds of the stage's richardson_lucy call and its transform bound."""
    from merfishflow.image import deconvolution as dc
    from merfishflow.stages.deconvolve import DeconvolutionParams

    params = DeconvolutionParams()
    psf = dc._check_psf(make_psf())
    image = synthetic_image(shape_zyx, seed)
    mirror_z = dc._resolve_z_boundary(params.z_boundary, psf) == "mirror"
    reference, rows = {}, []
    for tile in tiles:
        _, yblocks, xblocks, fft_shape = dc._plan(shape_zyx, psf.shape, tile, params.overlap_yx, mirror_z)
        n_blocks = len(yblocks) * len(xblocks)
        for name in backends:
            backend = dc._backend(name, workers, mirror_z)
            pair = time_transform_pair(dc, backend, fft_shape)
            call = dict(stop_tolerance=params.stop_tolerance, acceleration=params.acceleration, tile_yx=tile,
                        overlap_yx=params.overlap_yx, z_boundary=params.z_boundary, xp=name, workers=workers)
            dc.richardson_lucy(image[:, :64, :64], psf, 2, **{**call, "tile_yx": None})   # warm-up: imports, kernels
            seconds = []
            for _ in range(repeats):
                start = time.perf_counter()
                out = dc.richardson_lucy(image, psf, params.iterations, **call)
                seconds.append(time.perf_counter() - start)
            reference.setdefault(tile, out)
            bound = n_blocks * params.iterations * 2 * pair
            row = {"backend": name, "tile_yx": tile, "fft_shape_zyx": list(fft_shape), "blocks": n_blocks,
                   "iterations": params.iterations, "workers": workers, "seconds": seconds,
                   "pair_seconds": pair, "transform_bound_seconds": bound, "ratio": min(seconds) / bound,
                   "max_difference_vs_first": float(np.abs(out - reference[tile]).max() / reference[tile].max())}
            if name == "cupy":
                row["device_pool_bytes"] = int(backend.xp.get_default_memory_pool().total_bytes())
            rows.append(row)
            print(f"volume {tuple(shape_zyx)} {name} tile_yx={tile}: {min(seconds):.2f} s "
                  f"(transform bound {bound:.2f} s, ratio {row['ratio']:.2f})", flush=True)
    return rows


# report ----------------------------------------------------------------------------------------
def main(argv=None):
    from merfishflow.cpus import available_cpus

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--block", type=int, nargs=3, default=[100, 512, 512], metavar=("Z", "Y", "X"),
                        help="core of the block timed in part 1 (default 100 512 512; tile_yx = its y, x)")
    parser.add_argument("--tile", type=int, default=512, help="tile_yx of the memory run (default 512)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of the iteration timing")
    parser.add_argument("--iterations-per-repeat", type=int, default=2)
    parser.add_argument("--memory-shape", type=int, nargs=3, default=[100, 2048, 2048], metavar=("Z", "Y", "X"))
    parser.add_argument("--iterations", type=int, default=2, help="RL iterations of the memory run")
    parser.add_argument("--workers", type=int, default=available_cpus(), help="scipy.fft threads")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--no-iteration", action="store_true", help="skip the iteration-cost measurement")
    parser.add_argument("--volume", type=int, nargs=3, metavar=("Z", "Y", "X"),
                        help="also deconvolve one volume of this shape with the stage's defaults (part 3)")
    parser.add_argument("--xp", nargs="+", default=["numpy"], choices=["numpy", "cupy"],
                        help="backends of part 3 (default numpy)")
    parser.add_argument("--volume-tiles", type=int, nargs="+", default=None,
                        help="tile_yx values of part 3 (default: the stage's, 512)")
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    parser.add_argument("--child", choices=["imports", "deconvolve"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return run_child(args)

    info = _common.machine_info()
    results = {"machine": info, "load_average_start": _common.load_average()}
    if not args.no_iteration:
        results["iteration"] = time_iteration(tuple(args.block), args.repeats, args.iterations_per_repeat,
                                              args.workers, args.seed)
    if not args.no_memory:
        results["memory"] = measure_memory(tuple(args.memory_shape), args.tile, args.iterations, args.workers)
        m = results["memory"]
        print(f"memory {m['shape_zyx']}: +{m['increase_bytes'] / GB:.2f} GB in {m['wall_s']:.0f} s", flush=True)
    if args.volume:
        from merfishflow.stages.deconvolve import DeconvolutionParams

        tiles = args.volume_tiles or [DeconvolutionParams().tile_yx]
        results["volume"] = time_volume(tuple(args.volume), args.xp, tiles, args.workers, args.seed)
    results["load_average_end"] = _common.load_average()
    print()
    print(report(results, argv))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


def iteration_report(t: dict) -> list:
    z, y, x = t["block_zyx"]
    return [
        "",
        f"Block: an interior core {z} x {y} x {x} of a tiled image (tile_yx={tuple(t['tile_yx'])}, default overlap), PSF "
        f"{tuple(t['psf_shape_zyx'])} (emission {EMISSION_UM} µm), padded FFT shape {tuple(t['fft_shape_zyx'])}, "
        f"scipy.fft workers={t['workers']}, {len(t['fft4_s'])} repeats (median), "
        f"{t['iterations_per_repeat']} iterations per repeat.",
        "",
        "| measurement | seconds (each repeat) |",
        "|---|---|",
        f"| baseline: 4 x `scipy.fft.rfftn` of the padded float32 block | {', '.join(f'{s:.2f}' for s in t['fft4_s'])} |",
        f"| one RL iteration (2 rfftn + 2 irfftn + element-wise) | {', '.join(f'{s:.2f}' for s in t['iteration_s'])} |",
        f"| one RL iteration with `stop_tolerance` (2 extra norms) | "
        f"{', '.join(f'{s:.2f}' for s in t['iteration_tol_s'])} |",
        "",
        f"**Ratio RL iteration / 4 rfftn = {t['ratio']:.2f}** (median of the per-repeat ratios "
        f"{', '.join(f'{x:.2f}' for x in t['paired_ratios'])}; target <= 1.5: "
        f"{'met' if t['ratio'] <= 1.5 else 'NOT met'}); ratio of the medians {t['ratio_of_medians']:.2f}, "
        f"of the fastest repeats {t['ratio_of_minima']:.2f}. Throughput per iteration (median): "
        f"{t['padded_mvox_s']:.1f} Mvox/s of padded block, {t['core_mvox_s']:.1f} Mvox/s of image (core) voxels.",
    ]


def report(r: dict, argv) -> str:
    argv = sys.argv[1:] if argv is None else argv
    cmd = " ".join(["python benchmarks/bench_deconvolution.py", *argv])
    lines = [
        f"Machine: {_common.machine_line(r['machine'])}",
        f"Command: `{cmd}`. Load average (1/5/15 min) at start {r['load_average_start']}, "
        f"at end {r['load_average_end']} (the machine is shared; timings are noisy).",
    ]
    if "iteration" in r:
        lines += iteration_report(r["iteration"])
    if "memory" in r:
        m = r["memory"]
        z, y, x = m["shape_zyx"]
        lines += [
            "",
            f"Peak memory: {z} x {y} x {x} uint16 input ({m['input_bytes'] / GB:.2f} GB) deconvolved with "
            f"tile_yx={m['tile_yx']}, {m['iterations']} iterations ({m['wall_s']:.0f} s including building the "
            f"input); float32 output {m['output_bytes'] / GB:.2f} GB.",
            "",
            "| baseline RSS GB (imports only) | peak RSS GB | **increase GB** | `richardson_lucy_peak_bytes` GB |",
            "|---|---|---|---|",
            f"| {m['baseline_rss_bytes'] / GB:.2f} | {m['peak_rss_bytes'] / GB:.2f} | "
            f"**{m['increase_bytes'] / GB:.2f}** | {m['estimate_bytes'] / GB:.2f} |",
            "",
            f"Increase {m['increase_bytes'] / GB:.2f} GB (target <= 6 GB: "
            f"{'met' if m['increase_bytes'] <= 6 * GB else 'NOT met'}).",
        ]
    if "volume" in r:
        lines += ["", "One volume, the deconvolve stage's defaults, host transfers included (fastest of the repeats):", "",
                  "| backend | tile_yx | block (FFT shape) | blocks | seconds | transform pair ms | "
                  "transform bound s | **ratio** | max difference vs first backend |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for v in r["volume"]:
            lines.append(f"| {v['backend']} | {v['tile_yx']} | {tuple(v['fft_shape_zyx'])} | {v['blocks']} | "
                         f"{min(v['seconds']):.2f} | {v['pair_seconds'] * 1e3:.2f} | "
                         f"{v['transform_bound_seconds']:.2f} | **{v['ratio']:.2f}** | "
                         f"{v['max_difference_vs_first']:.1e} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

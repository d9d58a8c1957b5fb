"""Whole pipeline vs starfish's MERFISH recipe on the same simulated tile: seconds, peak memory and F1.

For each case this script

1. simulates an experiment of one tile (8 rounds x 2 readouts = 16 bits, a polyDT fiducial, uint16
   camera counts) with merfishflow's simulator (``snakemake --until simulate``; not timed as pipeline);
2. runs the whole workflow, every default rule from raw_data to the counts (``snakemake --cores 2``, or ``--cores``;
   no exports), and reads every job's Snakemake ``benchmark:`` TSV (``logs/benchmarks/<stage>/``):
   seconds, CPU seconds and peak RSS per stage; F1 from the pipeline's own ``evaluation.json``;
3. right after, runs starfish 0.4.0's MERFISH recipe in a child process (peak RSS from
   ``getrusage``): the tile's camera-corrected readouts and fiducials (``corrected_data``, what
   merfishflow's ingest makes of the raw TIFFs: photoelectrons, unregistered) as ImageStacks, the
   codebook from merfishflow's SpaceTx codebook export, then starfish's registration
   (``LearnTransform.Translation`` on the z-max-projected fiducials, ``ApplyTransform.Warp``), its
   filters (``GaussianHighPass(3)``, ``DeconvolvePSF(15 iterations, sigma 2)``,
   ``GaussianLowPass(1)``), per-bit scaling and ``PixelSpotDecoder`` (euclidean, distance 0.5176,
   ``min_area`` 2); its spots are scored against the same truth with
   :func:`merfishflow.evaluation.spots.score_spots`;
4. measures a machine limit in the same run: the seconds of one transform pair (forward + inverse,
   scipy, ``--cores`` workers: real FFTs, or a DCT in z and real FFTs in y/x for the mirror z boundary) on the
   deconvolution's block shape, and from it the time the deconvolution stage's transforms alone need
   (volumes x blocks x iterations x 2 pairs).

The SpaceTx tile-set export is of the *registered, deconvolved* data (merfishflow's output), so
starfish is given the corrected data instead: fed the export, it would be scored on merfishflow's
own registration and deconvolution. Its wall time is from loading the arrays to the decoded table.

Usage
-----
    python benchmarks/bench_pipeline.py --quick            # 9 x 256^2, ~3 min
    python benchmarks/bench_pipeline.py --case 1024        # 9 x 1024^2, ~15 min
    python benchmarks/bench_pipeline.py --case 512 --iterations 10 --json out.json
    python benchmarks/bench_pipeline.py --case 1024 --decon '{"device": "gpu"}'   # deconvolution on cupy

``--keep DIR`` keeps (and reuses, if the simulation parameters match) the simulated experiment;
``--simulate-only`` stops after simulating it (to prepare it once, on more cores, for several runs).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

CASES = {
    "quick": [9, 256, 256],
    "512": [9, 512, 512],
    "1024": [9, 1024, 1024],
}
SIMULATION = {"seed": 7, "n_tiles_yx": [1, 1], "n_rounds": 8, "n_readout_channels": 2,
              "n_genes": 40, "n_blanks": 10}
STARFISH_DISTANCE = 0.5176  # one bit flipped in a weight-4 code (starfish's MERFISH example)
STARFISH_MIN_AREA = 2
# In units of each bit's 99.9th percentile; the best F1 of 0.1, 0.25, 0.5, 1, 1.5, 2.5 on the quick case
# (benchmarks/RESULTS.md). BENCH_STARFISH_MAGNITUDE overrides it.
STARFISH_MAGNITUDE = 1.0
TILE = "tile0000"


# merfishflow ------------------------------------------------------------------------------------
def write_config(path: Path, experiment: Path, shape, deconvolution: dict, simulation: dict) -> Path:
    params = {**SIMULATION, "image_shape_zyx": list(shape), **simulation}
    config = {"experiment_dir": str(experiment), "simulation": {"enabled": True, "params": params},
              "exports": {"tiles": [], "tiff": [], "spacetx": False, "starfish_codebook": False}}
    if deconvolution:
        config["deconvolution"] = deconvolution
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def snakemake(work: Path, config: Path, *args, cores: int = 2) -> float:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(_common.REPO / "Snakefile"), "--directory", str(work),
           "--configfile", str(config), "--cores", str(cores), "--quiet", "all", *args]
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env=_common.snakemake_env(), cwd=work)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return seconds


def stage_table(experiment: Path) -> dict:
    """``{stage: {"jobs", "seconds", "cpu_seconds", "max_rss_mb"}}`` from every job's benchmark TSV."""
    stages = {}
    for folder in sorted((experiment / "logs" / "benchmarks").iterdir()):
        rows = []
        for tsv in sorted(folder.glob("*.tsv")):
            with open(tsv) as fh:
                rows += list(csv.DictReader(fh, delimiter="\t"))

        def number(row, key):
            try:
                return float(row[key])
            except (KeyError, ValueError):
                return 0.0

        stages[folder.name] = {"jobs": len(rows), "seconds": sum(number(r, "s") for r in rows),
                               "cpu_seconds": sum(number(r, "cpu_time") for r in rows),
                               "max_rss_mb": max((number(r, "max_rss") for r in rows), default=0.0)}
    return stages


def simulate(base: Path, shape, deconvolution: dict, simulation: dict, cores: int = 2):
    """``(experiment, config, work)`` under ``base``; simulates the experiment unless its truth is already there."""
    experiment = base / "experiment"
    config = write_config(base / "config.yaml", experiment, shape, deconvolution, simulation)
    work = base / "work"
    work.mkdir(exist_ok=True)
    if not (experiment / "ground_truth" / "spots.parquet").exists():
        snakemake(work, config, "--until", "simulate", cores=cores)
    return experiment, config, work


def run_merfishflow(base: Path, shape, deconvolution: dict, simulation: dict, cores: int = 2) -> dict:
    experiment, config, work = simulate(base, shape, deconvolution, simulation, cores)
    shutil.rmtree(experiment / "qi2labdatastore", ignore_errors=True)
    shutil.rmtree(experiment / "logs", ignore_errors=True)
    load_before = _common.load_average()
    wall = snakemake(work, config, cores=cores)
    stages = stage_table(experiment)
    stages.pop("simulate", None)
    evaluation = json.loads((experiment / "qi2labdatastore" / "decoded" / "evaluation.json").read_text())
    return {"wall_seconds": wall, "stages": stages, "f1": evaluation["overall"]["f1"],
            "cells_mean_iou": cells_mean_iou(experiment),
            "precision": evaluation["overall"]["precision"], "recall": evaluation["overall"]["recall"],
            "n_molecules": evaluation["overall"]["n_molecules"], "load_before": load_before,
            "load_after": _common.load_average(), "experiment": str(experiment)}


def cells_mean_iou(experiment: Path) -> float:
    """Mean IoU of the tile's cell masks against the simulator's (:func:`merfishflow.evaluation.cells.mean_iou`)."""
    import tifffile

    from merfishflow import Datastore
    from merfishflow.evaluation.cells import mean_iou

    truth = tifffile.imread(experiment / "ground_truth" / f"cells_{TILE}.tif")
    return float(mean_iou(Datastore(experiment / "qi2labdatastore").labels(TILE), truth))


# starfish (child process) -----------------------------------------------------------------------
def starfish_child(experiment: Path, out: Path) -> None:
    """Run starfish's MERFISH recipe on the corrected data of TILE; write spots (parquet) and timings (json)."""
    from starfish import Codebook, ImageStack
    from starfish.image import ApplyTransform, Filter, LearnTransform
    from starfish.spots import DetectPixels
    from starfish.types import Axes, Features, Levels

    from merfishflow.io import datastore
    from merfishflow.io.export import export_starfish_codebook
    from merfishflow.io.naming import bit_name, round_name
    from merfishflow.io.paths import CORRECTED_DATA, ExperimentPaths

    paths = ExperimentPaths(experiment)
    calibration = datastore.read_marker(paths.calibrations)
    rounds = calibration["exp_order"]["rounds"]
    times = {}
    start = time.perf_counter()
    codebook = Codebook.open_json(str(export_starfish_codebook(experiment, out.parent / "starfish_codebook.json")))
    primary = np.stack([np.stack([datastore.read_array(paths.readout_group(TILE, bit_name(b)), CORRECTED_DATA)
                                  for b in row]) for row in rounds]).astype(np.float32) / 65535
    fiducial = np.stack([datastore.read_array(paths.fiducial_group(TILE, round_name(r)), CORRECTED_DATA)[None]
                         for r in range(len(rounds))]).astype(np.float32) / 65535
    imgs, fiducials = ImageStack.from_numpy(primary), ImageStack.from_numpy(fiducial)
    del primary, fiducial
    times["load"] = time.perf_counter() - start

    start = time.perf_counter()
    projected = Filter.Reduce((Axes.ZPLANE,), func="max").run(fiducials)
    reference = projected.sel({Axes.ROUND: 0})
    transforms = LearnTransform.Translation(reference_stack=reference, axes=Axes.ROUND, upsampling=100).run(projected)
    ApplyTransform.Warp().run(imgs, transforms_list=transforms, in_place=True)
    times["registration"] = time.perf_counter() - start

    start = time.perf_counter()
    Filter.GaussianHighPass(sigma=3).run(imgs, in_place=True)
    imgs = Filter.DeconvolvePSF(num_iter=15, sigma=2, level_method=Levels.SCALE_SATURATED_BY_CHUNK).run(imgs)
    Filter.GaussianLowPass(sigma=1).run(imgs, in_place=True)
    times["filters"] = time.perf_counter() - start

    start = time.perf_counter()
    # The recipe's per-bit scale factors equalise the bits; here each bit's 99.9th percentile, with one
    # common factor on top so that every value stays in starfish's [0, 1] (the magnitude threshold, in
    # units of the percentile, is divided by it too; the distances do not change).
    selectors = [{Axes.ROUND: r, Axes.CH: c} for r in range(imgs.num_rounds) for c in range(imgs.num_chs)]
    scales = [float(np.percentile(imgs.get_slice(s)[0], 99.9)) or 1.0 for s in selectors]
    common = max(max(float(imgs.get_slice(s)[0].max()) / k for s, k in zip(selectors, scales)), 1.0)
    for selector, scale in zip(selectors, scales):
        data = imgs.get_slice(selector)[0]
        imgs.set_slice(selector, np.clip(data / (scale * common), 0, 1).astype(np.float32), [Axes.ZPLANE])
    magnitude = float(os.environ.get("BENCH_STARFISH_MAGNITUDE", STARFISH_MAGNITUDE))
    decoder = DetectPixels.PixelSpotDecoder(codebook=codebook, metric="euclidean", norm_order=2,
                                            distance_threshold=STARFISH_DISTANCE, magnitude_threshold=magnitude / common,
                                            min_area=STARFISH_MIN_AREA, max_area=np.inf)
    spots, _ = decoder.run(imgs)
    spots = spots.loc[spots[Features.PASSES_THRESHOLDS]]
    times["decoding"] = time.perf_counter() - start

    import pandas as pd

    table = pd.DataFrame({"tile": 0, "gene_id": spots[Features.TARGET].values.astype(str),
                          "z_px": spots[Axes.ZPLANE.value].values.astype(float),
                          "y_px": spots[Axes.Y.value].values.astype(float),
                          "x_px": spots[Axes.X.value].values.astype(float)})
    table = table[table["gene_id"] != "nan"]
    table.to_parquet(out.with_suffix(".parquet"))
    out.write_text(json.dumps(times))


def run_starfish(base: Path, experiment: Path) -> dict:
    import pandas as pd

    from merfishflow.io.datastore import read_marker
    from merfishflow.io.paths import ExperimentPaths
    from merfishflow.evaluation.spots import score_spots

    out = base / "starfish" / "times.json"
    out.parent.mkdir(exist_ok=True)
    load_before = _common.load_average()
    start = time.perf_counter()
    rss_kib = _common.child_peak_rss_kib(__file__, ["--starfish-child", str(experiment), str(out)])
    wall = time.perf_counter() - start
    times = json.loads(out.read_text())
    decoded = pd.read_parquet(out.with_suffix(".parquet"))
    truth = pd.read_parquet(experiment / "ground_truth" / "spots.parquet")
    voxel = read_marker(ExperimentPaths(experiment).calibrations)["voxel_size_zyx_um"]
    score = score_spots(decoded, truth, voxel)["overall"]
    return {"wall_seconds": wall, "steps": times, "max_rss_mb": rss_kib / 1024, "f1": score["f1"],
            "precision": score["precision"], "recall": score["recall"], "n_decoded": len(decoded),
            "load_before": load_before, "load_after": _common.load_average()}


# machine limit ----------------------------------------------------------------------------------
def fft_limit(experiment: Path, deconvolution: dict, repeats: int = 5, workers: int = 2) -> dict:
    """Seconds of one forward + inverse block transform pair (scipy, ``workers`` threads) on the deconvolution's block, as
    richardson_lucy runs it (rfftn, or DCT in z + rfftn in y/x for the mirror z boundary); the transform-only time
    of the deconvolution stage (volumes x blocks x iterations x 2 pairs)."""
    from merfishflow.image import deconvolution as dc  # the block geometry and transforms richardson_lucy uses
    from merfishflow.io import datastore
    from merfishflow.io.paths import ExperimentPaths

    paths = ExperimentPaths(experiment)
    calibration = datastore.read_marker(paths.calibrations)
    psfs = datastore.read_array(paths.calibrations, "psf_data")
    shape = image_shape(experiment)
    from merfishflow.stages.deconvolve import DeconvolutionParams

    params = {**DeconvolutionParams().to_dict(), **deconvolution}
    z_boundary = dc._resolve_z_boundary(params["z_boundary"], psfs[0])
    mirror_z = z_boundary == "mirror"
    _, yblocks, xblocks, fft_shape = dc._plan(shape, psfs.shape[1:], params["tile_yx"], params["overlap_yx"], mirror_z)
    backend = dc._NumpyBackend(workers, mirror_z)
    block = np.random.default_rng(0).random(fft_shape, dtype=np.float32)
    backend.inverse(backend.forward(block), fft_shape)   # warm-up: plans, first touch
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        backend.inverse(backend.forward(block), fft_shape)
        seconds.append(time.perf_counter() - start)
    pair = min(seconds)
    volumes = len(calibration["exp_order"]["rounds"]) * (1 + len(calibration["exp_order"]["columns"]))
    blocks = len(yblocks) * len(xblocks)
    return {"fft_shape": list(fft_shape), "z_boundary": z_boundary, "pair_seconds": pair, "workers": workers,
            "blocks_per_volume": blocks, "volumes": volumes,
            "gflops": 2 * 2.5 * np.prod(fft_shape) * np.log2(np.prod(fft_shape)) / pair / 1e9,
            "decon_fft_seconds_per_iteration": volumes * blocks * 2 * pair}


def image_shape(experiment: Path) -> list:
    doc = yaml.safe_load((experiment / "raw_data" / "experiment.yaml").read_text())
    return doc["image_shape_zyx"]


# report -----------------------------------------------------------------------------------------
def report(case: str, shape, mf: dict, sf: dict, fft: dict, iterations: int) -> str:
    lines = [f"case {case}: 1 tile x {shape} voxels, 8 rounds x 2 readouts (16 bits) + fiducial, "
             f"{mf['n_molecules']} molecules in the stack",
             f"load average before/after merfishflow: {mf['load_before']} -> {mf['load_after']}; "
             f"starfish: {sf['load_before']} -> {sf['load_after']}",
             "", "| merfishflow stage | jobs | seconds | CPU seconds | peak RSS MB |", "|---|---|---|---|---|"]
    for stage, row in sorted(mf["stages"].items(), key=lambda kv: -kv[1]["seconds"]):
        lines.append(f"| {stage} | {row['jobs']} | {row['seconds']:.1f} | {row['cpu_seconds']:.1f} | "
                     f"{row['max_rss_mb']:.0f} |")
    job_seconds = sum(r["seconds"] for r in mf["stages"].values())
    cpu = sum(r["cpu_seconds"] for r in mf["stages"].values())
    peak = max(r["max_rss_mb"] for r in mf["stages"].values())
    lines += [f"| **sum of jobs** | {sum(r['jobs'] for r in mf['stages'].values())} | {job_seconds:.1f} | "
              f"{cpu:.1f} | {peak:.0f} |", "",
              "| starfish step | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in sf["steps"].items()]
    decon = mf["stages"].get("deconvolve", {}).get("seconds", float("nan"))
    fft_bound = fft["decon_fft_seconds_per_iteration"] * iterations
    lines += ["", "| | merfishflow | starfish | ratio |", "|---|---|---|---|",
              f"| wall seconds (whole run) | {mf['wall_seconds']:.1f} | {sf['wall_seconds']:.1f} | "
              f"**{mf['wall_seconds'] / sf['wall_seconds']:.2f}** |",
              f"| peak RSS MB (largest job / process) | {peak:.0f} | {sf['max_rss_mb']:.0f} | "
              f"{peak / sf['max_rss_mb']:.2f} |",
              f"| F1 (0.5 µm) | **{mf['f1']:.3f}** (P {mf['precision']:.3f}, R {mf['recall']:.3f}) | "
              f"{sf['f1']:.3f} (P {sf['precision']:.3f}, R {sf['recall']:.3f}) | |",
              f"| cells: mean IoU against the simulated masks | {mf['cells_mean_iou']:.3f} | - | |",
              "", f"machine limit: one forward+inverse transform pair (z boundary {fft['z_boundary']}) on the "
              f"{fft['fft_shape']} block takes "
              f"{fft['pair_seconds'] * 1e3:.0f} ms ({fft['gflops']:.1f} GFLOP/s, {fft['workers']} workers); the deconvolution's "
              f"FFTs alone ({fft['volumes']} volumes x {fft['blocks_per_volume']} blocks x {iterations} iterations x "
              f"2 pairs) need {fft_bound:.1f} s on the whole machine: merfishflow wall / FFT bound = "
              f"**{mf['wall_seconds'] / fft_bound:.2f}**; summed deconvolution job seconds / FFT bound = "
              f"{decon / fft_bound:.2f} (jobs that run at the same time each count their own wall time)"]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=sorted(CASES), default="1024")
    parser.add_argument("--quick", action="store_true", help="the small case (9 x 256^2)")
    parser.add_argument("--iterations", type=int, help="deconvolution.iterations (default: the config default)")
    parser.add_argument("--decon", default="{}", help="more deconvolution config keys as JSON")
    parser.add_argument("--simulation", default="{}", help='more simulation parameters as JSON (another PSF: {"numerical_aperture": 1.0})')
    parser.add_argument("--no-starfish", action="store_true")
    parser.add_argument("--cores", type=int, default=2, help="snakemake --cores and the FFT limit's workers (default 2)")
    parser.add_argument("--keep", type=Path, help="folder to keep (and reuse) the simulated experiment in")
    parser.add_argument("--simulate-only", action="store_true", help="only simulate the experiment (with --keep)")
    parser.add_argument("--json", type=Path, help="write every number here")
    parser.add_argument("--starfish-child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.starfish_child:
        starfish_child(*args.starfish_child)
        return
    case = "quick" if args.quick else args.case
    shape = CASES[case]
    deconvolution = json.loads(args.decon)
    if args.iterations:
        deconvolution["iterations"] = args.iterations
    from merfishflow.stages.deconvolve import DeconvolutionParams

    iterations = deconvolution.get("iterations", DeconvolutionParams().iterations)
    base = args.keep or Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    base.mkdir(parents=True, exist_ok=True)
    info = _common.machine_info()
    print(_common.machine_line(info), flush=True)
    if args.simulate_only:
        if args.keep is None:
            parser.error("--simulate-only needs --keep DIR (the simulated experiment would be deleted)")
        simulate(base, shape, deconvolution, json.loads(args.simulation), args.cores)
        return
    try:
        mf = run_merfishflow(base, shape, deconvolution, json.loads(args.simulation), args.cores)
        print(f"merfishflow: {mf['wall_seconds']:.1f} s, F1 {mf['f1']:.3f}", flush=True)
        experiment = Path(mf["experiment"])
        if args.no_starfish:
            sf = {"wall_seconds": float("nan"), "steps": {}, "max_rss_mb": float("nan"), "f1": float("nan"),
                  "precision": float("nan"), "recall": float("nan"), "load_before": "-", "load_after": "-"}
        else:
            sf = run_starfish(base, experiment)
            print(f"starfish: {sf['wall_seconds']:.1f} s, F1 {sf['f1']:.3f}", flush=True)
        fft = fft_limit(experiment, deconvolution, workers=args.cores)
        print(report(case, image_shape(experiment), mf, sf, fft, iterations))
        if args.json:
            args.json.write_text(json.dumps({"case": case, "machine": info, "deconvolution": deconvolution,
                                             "merfishflow": mf, "starfish": sf, "fft": fft}, indent=1, default=str))
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Benchmark of merfishflow.segmentation.segment_cells: seconds and peak memory per tile.

Each measurement runs in a fresh child process that synthesizes a
fiducial-like image (bright cells of ~3.5 µm radius on a dim background,
smoothed random blobs, Poisson-like noise), times one
``scipy.ndimage.gaussian_filter`` pass (sigma 1 voxel, float32) over the same
volume as the machine-limit yardstick, then times ``segment_cells``, and
reports its peak RSS (``ru_maxrss``). Peak memory is that minus the peak of
a child that only imports numpy/scipy/skimage/merfishflow.segmentation and
builds the same input (the baseline).

Usage
-----
    python benchmarks/bench_segmentation.py                      # 16x160x160 and 25x2048x2048
    python benchmarks/bench_segmentation.py --shapes 16x160x160  # quick
    python benchmarks/bench_segmentation.py --append             # also append to benchmarks/RESULTS.md
    python benchmarks/bench_segmentation.py --accuracy experiments/demo   # mean IoU per tile vs ground truth

``--accuracy EXPERIMENT`` (no timing) segments every tile of a simulated
experiment that has been run through deconvolution and registration, once from
the camera-corrected round-0 fiducial (``corrected_data``) and once from the
registered deconvolved one (``registered_decon_data``, what the pipeline's
segment rule uses), and prints :func:`merfishflow.segmentation.mean_iou`
against ``ground_truth/cells_<tile>.tif``. It also prints two ceilings of
the same score: ``fg_cap`` (the foreground of ``segment_cells`` split
perfectly: every foreground voxel given the true label nearest to it) and
``true_seed_ws`` (the same watershed of the distance transform, but with one
seed per true cell at its deepest foreground voxel).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
VOXEL = (0.31, 0.108, 0.108)

CHILD = r"""
import json, resource, sys, time
import numpy as np
from scipy import ndimage as ndi
import skimage.segmentation, skimage.filters
from merfishflow.segmentation import segment_cells
shape = tuple(json.loads(sys.argv[1])); mode = sys.argv[2]
voxel = np.array(%r)
t0 = time.perf_counter()
rng = np.random.default_rng(0)
# blobs: noise on a grid ~1.2 um coarse, smoothed, upsampled linearly, thresholded
step = np.maximum(np.round(1.2 / voxel).astype(int), 1)
coarse = rng.standard_normal(tuple(-(-n // s) + 2 for n, s in zip(shape, step))).astype(np.float32)
coarse = ndi.gaussian_filter(coarse, 1.5)
field = ndi.zoom(coarse, step, order=1)[: shape[0], : shape[1], : shape[2]]
del coarse
image = np.where(field > 0.1 * field.std(), np.float32(1000), np.float32(60))
del field
image += rng.standard_normal(shape, dtype=np.float32) * np.sqrt(image)
build_s = time.perf_counter() - t0
out = {"shape": shape, "build_s": build_s}
if mode == "run":
    t0 = time.perf_counter(); ndi.gaussian_filter(image, 1.0, output=np.empty_like(image))
    out["gauss_s"] = time.perf_counter() - t0
    t0 = time.perf_counter(); labels = segment_cells(image, voxel)
    out["seg_s"] = time.perf_counter() - t0; out["n_cells"] = int(labels.max())
out["maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps(out))
""" % (VOXEL,)


def child(shape, mode):
    r = subprocess.run([sys.executable, "-c", CHILD, json.dumps(list(shape)), mode], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def accuracy(experiment_dir):
    """Mean IoU per tile of the demo-like experiment, corrected vs deconvolved input, plus two ceilings."""
    import numpy as np
    import tifffile
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    from merfishflow import datastore
    from merfishflow.paths import ExperimentPaths
    from merfishflow.segmentation import SegmentationParams, _foreground, mean_iou, segment_cells

    paths = ExperimentPaths(experiment_dir)
    params = SegmentationParams()
    for truth_file in sorted((Path(experiment_dir) / "ground_truth").glob("cells_tile*.tif")):
        tile = truth_file.stem.split("_")[1]
        truth = tifffile.imread(truth_file)
        voxel = np.asarray(datastore.read_marker(paths.global_registration(tile))["spacing_zyx_um"], float)
        inputs = {"corrected": np.asarray(datastore.read_array(paths.fiducial_group(tile, "round0000"),
                                                               "corrected_data"), np.float32),
                  "deconvolved": datastore.read_marked_array(
                      paths.fiducial_array(tile, "round0000", "registered_decon_data")).astype(np.float32)}
        for name, image in inputs.items():
            t0 = time.perf_counter()
            labels = segment_cells(image, voxel, params)
            seconds = time.perf_counter() - t0
            smoothed = ndi.gaussian_filter(image, params.smoothing_sigma_um / voxel)
            fg = _foreground(smoothed, params)
            _, nearest = ndi.distance_transform_edt(truth == 0, sampling=voxel, return_indices=True)
            perfect = np.where(fg, truth[tuple(nearest)], 0)
            distance = ndi.distance_transform_edt(fg, sampling=voxel)
            ids = np.unique(truth[truth > 0])
            deepest = np.asarray(ndi.maximum_position(distance * (truth > 0), truth, ids)).reshape(-1, 3)
            markers = np.zeros(truth.shape, np.int32)
            markers[tuple(deepest.T)] = np.arange(1, len(ids) + 1)
            seeded = watershed(-distance, markers, mask=fg)
            print(json.dumps({"tile": tile, "input": name, "mean_iou": round(mean_iou(labels, truth), 3),
                              "n_cells": int(labels.max()), "n_true": int(len(ids)),
                              "fg_cap": round(mean_iou(perfect, truth), 3),
                              "true_seed_ws": round(mean_iou(seeded, truth), 3), "seconds": round(seconds, 2)}),
                  flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="+", default=["16x160x160", "25x2048x2048"])
    ap.add_argument("--append", action="store_true")
    ap.add_argument("--accuracy", metavar="EXPERIMENT", help="only report mean IoU on a simulated experiment")
    args = ap.parse_args()
    if args.accuracy:
        accuracy(args.accuracy)
        return
    info = _common.machine_info()
    rows = []
    for s in args.shapes:
        shape = tuple(int(v) for v in s.split("x"))
        base = child(shape, "baseline")
        run = child(shape, "run")
        peak_gb = (run["maxrss_kb"] - base["maxrss_kb"]) * 1024 / 1e9
        nvox = shape[0] * shape[1] * shape[2]
        row = dict(shape=s, nvox=nvox, seg_s=run["seg_s"], gauss_s=run["gauss_s"], ratio=run["seg_s"] / run["gauss_s"],
                   n_cells=run["n_cells"], base_gb=base["maxrss_kb"] * 1024 / 1e9, peak_gb=run["maxrss_kb"] * 1024 / 1e9,
                   inc_gb=peak_gb, bytes_per_voxel=peak_gb * 1e9 / nvox, load=_common.load_average())
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.append:
        lines = ["", "## Segmentation (`merfishflow.segmentation.segment_cells`, watershed): seconds, peak memory "
                 "(`bench_segmentation.py`)", "",
                 "Machine: " + _common.machine_line(info) + ".",
                 "Command: `python benchmarks/bench_segmentation.py " + " ".join(sys.argv[1:]) + "`", "",
                 "| shape (z, y, x) | cells | segment_cells s | gaussian_filter s | ratio | peak RSS increase GB | bytes/voxel | load avg |",
                 "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['shape']} | {r['n_cells']} | {r['seg_s']:.2f} | {r['gauss_s']:.3f} | {r['ratio']:.0f} | "
                         f"{r['inc_gb']:.2f} | {r['bytes_per_voxel']:.0f} | {r['load']} |")
        with RESULTS.open("a") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - t0:.1f} s")

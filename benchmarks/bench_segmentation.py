"""Benchmark of merfishflow.cells.segmentation.segment_cells: seconds and peak memory per tile.

Each measurement runs in a fresh child process that synthesizes a
fiducial-like image (bright cells of ~3.5 µm radius on a dim background,
smoothed random blobs, Poisson-like noise), times one
``scipy.ndimage.gaussian_filter`` pass (sigma 1 voxel, float32) over the same
volume as the machine-limit yardstick, then times ``segment_cells``, and
reports its peak RSS (``ru_maxrss``). Peak memory is that minus the peak of
a child that only imports numpy/scipy/skimage/merfishflow.cells.segmentation and
builds the same input (the baseline).

Usage
-----
    python benchmarks/bench_segmentation.py                      # 16x160x160 and 25x2048x2048
    python benchmarks/bench_segmentation.py --shapes 16x160x160  # quick
    python benchmarks/bench_segmentation.py --append             # also append to benchmarks/RESULTS.md
    python benchmarks/bench_segmentation.py --accuracy experiments/demo   # scores of a finished simulated run

``--accuracy EXPERIMENT`` (no timing) scores a simulated experiment the
pipeline has run to the end: :func:`merfishflow.evaluation.cells.mean_iou` of each
tile's masks against ``ground_truth/cells_<tile>.tif``,
:func:`~merfishflow.evaluation.cells.mosaic_mean_iou` of the cells merged across
tiles (each cell judged once; also without the true cells of which less
than 5 µm³ is visible, as a secondary number), and
:func:`~merfishflow.evaluation.cells.assignment_accuracy` of the true-positive
spots of ``decoded/all_tiles_filtered_cells.parquet``.
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
from merfishflow.cells.segmentation import segment_cells
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
    """Scores of a finished simulated run: mean IoU per tile and over the mosaic, spot assignment."""
    import numpy as np
    import pyarrow.parquet as pq
    import tifffile

    from merfishflow.cells.assignment import merge_cells
    from merfishflow.evaluation.spots import match_spots
    from merfishflow.io.masks import read_masks
    from merfishflow.io.paths import ExperimentPaths
    from merfishflow.evaluation.cells import assignment_accuracy, mean_iou, mosaic_overlaps, mosaic_mean_iou

    experiment_dir = Path(experiment_dir)
    paths = ExperimentPaths(experiment_dir)
    truth_files = sorted((experiment_dir / "ground_truth").glob("cells_tile*.tif"))
    tiles = [f.stem.split("_")[1] for f in truth_files]
    truths = [tifffile.imread(f) for f in truth_files]
    mask_sets = [read_masks(paths.cell_masks(t)) for t in tiles]
    labels = [m.to_labels() for m in mask_sets]
    cells = merge_cells(mask_sets, lambda t: labels[t])
    merged = [cells.global_labels(k, lab) for k, lab in enumerate(labels)]
    origins = [m.origin_zyx_um for m in mask_sets]
    voxel = mask_sets[0].voxel_size_zyx_um
    for tile, lab, truth in zip(tiles, labels, truths):
        print(json.dumps({"tile": tile, "mean_iou": round(mean_iou(lab, truth), 3), "n_cells": int(lab.max()),
                          "n_true": int(len(np.unique(truth[truth > 0])))}))
    n_true = len(np.unique(np.concatenate([np.unique(t[t > 0]) for t in truths])))
    out = {"mosaic_mean_iou": round(mosaic_mean_iou(merged, truths, origins, voxel), 3),
           # Secondary: without the true cells of which less than the smallest cell kept is visible.
           "mosaic_mean_iou_min_5um3": round(mosaic_mean_iou(merged, truths, origins, voxel, min_volume_um3=5.0), 3),
           "n_cells": len(cells.table), "n_true": int(n_true)}
    # Spots: the true positives of the decoded, filtered, assigned table.
    spots = pq.read_table(paths.assigned_spots).to_pandas()
    truth_spots = pq.read_table(experiment_dir / "ground_truth" / "spots.parquet").to_pandas()
    matched = match_spots(spots, truth_spots, voxel)
    tp = matched >= 0
    cell_of_spot = truth_spots.drop_duplicates("spot_id").set_index("spot_id")["cell_id"]
    pair_counts, _, _ = mosaic_overlaps(merged, truths, origins, voxel)
    out["spots"] = assignment_accuracy(cell_of_spot.loc[matched[tp]].to_numpy(), spots["cell_id"].to_numpy()[tp],
                                       pair_counts)
    print(json.dumps(out), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="+", default=["16x160x160", "25x2048x2048"])
    ap.add_argument("--append", action="store_true")
    ap.add_argument("--accuracy", metavar="EXPERIMENT", help="only score a finished simulated run (IoU per tile and mosaic, spot assignment)")
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
        lines = ["", "## Segmentation (`merfishflow.cells.segmentation.segment_cells`, watershed): seconds, peak memory "
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

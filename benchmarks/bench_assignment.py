"""Benchmark of the assign stage (``merfishflow.cells.assignment``): seconds and peak memory per step.

Issue 5: "Seconds and peak memory of ... assignment, for the demo and for one
100 x 2048^2 tile". The assign stage (``stages/cells.py::run_assign``)
reads every tile's mask file, renders label volumes (two tiles at a time),
merges the cell instances of each overlapping tile pair
(:func:`~merfishflow.cells.assignment.merge_cells`), looks every spot up in its
tile's label volume (:func:`~merfishflow.cells.assignment.assign_spots`) and builds
the cells x genes matrix (:func:`~merfishflow.cells.assignment.count_matrix`).
The worst case for memory is one overlapping pair: ``merge_cells`` holds both
label volumes, so every case here is a pair of tiles.

Inputs (written once per case to ``--workdir``, default /tmp, never the repo;
fixed seeds, so the same bytes every run):

* two tiles of shape (z, y, x), voxel 0.31 x 0.108 x 0.108 µm, tile 1 shifted
  in x so that they overlap by ``overlap`` of their width. Cells are the Voronoi
  cells of jittered grid seeds laid out in *global* coordinates, cut to a ball
  of 0.6 x the seed spacing around their seed (so ~1/4 of the volume is
  background), computed on a grid coarsened ``f`` x in y and x and repeated
  back (``f`` = 1 for the demo case, 4 for the big one: 0.43 µm steps on the
  cell borders). Both tiles are cut from the same global cells, so a cell in
  the overlap has the same voxels in both tiles and is merged. Labels are
  relabelled 1..n per tile (as the segment stage does) and written with
  :func:`merfishflow.io.masks.write_masks` at the tile's origin.
* a spot table (``tile``, ``z_px``, ``y_px``, ``x_px``, ``gene_id``) with the
  spots split evenly over the two tiles, uniform positions, genes drawn from
  128 genes + 14 ``Blank-`` codewords (the blanks are not counted).

Cases: ``demo`` = 2 x 16 x 160 x 160, 20 % overlap, ~20 cells, 700 spots (3 runs,
median); ``big`` = 2 x 100 x 2048 x 2048, 10 % overlap, ~30 000 cells per tile
(seed spacing 3.7 µm), 1 000 000 spots (1 run). ``--planes N`` replaces the
100 planes of ``big`` (e.g. 50, to extrapolate; the table then says so).

Steps, each measured in a fresh child process (``--child``), as the stage runs them:

``read``    ``read_masks`` of both files, then ``MaskSet.to_labels`` of both;
``merge``   ``merge_cells`` (both label volumes resident, as the stage's cache holds them);
``assign``  ``assign_spots`` of all spots;
``count``   ``count_matrix``.

Peak memory = the child's ``ru_maxrss`` right after the step minus the
``ru_maxrss`` of a baseline child that imports the same modules and builds the
same inputs (for ``merge`` that includes both mask sets and label volumes,
for ``assign`` the label volumes, the merged cells and the spot table). The
benchmark's parent process stays small (it never imports merfishflow nor
builds data; the inputs are built in a child), so that ``ru_maxrss``, which
survives fork + exec, is the child's own.

Yardstick (machine limit, same child, after the peak has been read): the
seconds of one ``np.copyto`` of a tile's uint32 label volume into another,
already touched, one (memory bandwidth: 8 bytes moved per voxel). The ratio
is step seconds / copy seconds. For the demo tile (1.6 MB) the copy runs in
cache, so its ratios are not comparable to the big tile's.

Usage
-----
    python benchmarks/bench_assignment.py                       # demo and 2 x 100 x 2048 x 2048
    python benchmarks/bench_assignment.py --cases demo          # quick
    python benchmarks/bench_assignment.py --planes 50           # big case with 50 planes
    python benchmarks/bench_assignment.py --append              # also append to benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (numpy, yaml; no merfishflow)

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
VOXEL = (0.31, 0.108, 0.108)
CASES = {
    # name: shape, overlap fraction of x, cells per tile (sets the seed spacing), spots, coarsening, runs
    "demo": dict(shape=(16, 160, 160), overlap=0.2, cells_per_tile=12, n_spots=700, coarse=1, runs=3),
    "big": dict(shape=(100, 2048, 2048), overlap=0.1, cells_per_tile=30_000, n_spots=1_000_000, coarse=4, runs=1),
}
STEPS = ("read", "merge", "assign", "count")
N_GENES, N_BLANKS = 128, 14


# inputs (built in a child) ---------------------------------------------------------------------
def case_dir(workdir, name, spec):
    z, y, x = spec["shape"]
    return Path(workdir) / f"merfishflow_bench_assignment_{name}_{z}x{y}x{x}"


def x_shift_px(spec):
    return int(round((1 - spec["overlap"]) * spec["shape"][2]))


def build(folder, spec):
    """Write ``tile0000.mfmask``, ``tile0001.mfmask``, ``spots.parquet``, ``inputs.json`` to ``folder``."""
    import numpy as np
    import pandas as pd
    from scipy import ndimage as ndi

    from merfishflow.io.masks import write_masks

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    z, y, x = spec["shape"]
    shift = x_shift_px(spec)
    f = spec["coarse"]
    voxel = np.asarray(VOXEL)
    gshape = (z, y, x + shift)                       # both tiles, global voxel grid
    extent = np.asarray(gshape) * voxel              # µm
    tile_um3 = float(np.prod(np.asarray(spec["shape"]) * voxel))
    spacing = (tile_um3 / spec["cells_per_tile"]) ** (1 / 3)
    # Jittered grid seeds over the global extent (µm).
    axes = [np.arange(spacing / 2, e, spacing) for e in extent]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    seeds = grid + rng.uniform(-0.3, 0.3, grid.shape) * spacing
    seeds = np.clip(seeds, 0, extent - 1e-6)
    # Voronoi on the coarse grid: nearest seed by an anisotropic EDT of the seed image.
    cvox = voxel * np.array([1, f, f])
    cshape = tuple(int(-(-n // k)) for n, k in zip(gshape, (1, f, f)))
    cidx = np.minimum(np.floor(seeds / cvox).astype(int), np.asarray(cshape) - 1)
    seedimg = np.zeros(cshape, np.uint32)
    seedimg[tuple(cidx.T)] = np.arange(1, len(seeds) + 1, dtype=np.uint32)   # a collision keeps the later seed
    near = ndi.distance_transform_edt(seedimg == 0, sampling=cvox, return_distances=False, return_indices=True)
    coarse = seedimg[tuple(near)]
    # Cut each Voronoi cell to a ball of 0.6 x spacing around its seed position (on the coarse grid).
    d2 = np.zeros(cshape, np.float32)
    for k in range(3):
        d2 += ((near[k] - np.arange(cshape[k]).reshape([-1 if a == k else 1 for a in range(3)])) * cvox[k]) ** 2
    del near
    coarse[d2 > (0.6 * spacing) ** 2] = 0
    del d2, seedimg
    out = {"spec": {k: (list(v) if isinstance(v, tuple) else v) for k, v in spec.items()},
           "spacing_um": spacing, "x_shift_px": shift, "tiles": [], "voxel_size_zyx_um": list(VOXEL)}
    yi = np.arange(y) // f
    for t, x0 in enumerate((0, shift)):
        xi = (x0 + np.arange(x)) // f
        present = np.flatnonzero(np.bincount(coarse[:, :, xi[0]:xi[-1] + 1].ravel(), minlength=len(seeds) + 1))
        present = present[present > 0]
        lut = np.zeros(len(seeds) + 1, np.uint32)
        lut[present] = np.arange(1, len(present) + 1, dtype=np.uint32)
        labels = np.empty((z, y, x), np.uint32)
        for p in range(z):
            labels[p] = lut[coarse[p][np.ix_(yi, xi)]]
        origin = (0.0, 0.0, x0 * VOXEL[2])
        path = folder / f"tile{t:04d}.mfmask"
        write_masks(path, labels, VOXEL, origin, tile=f"tile{t:04d}", metadata={"benchmark": "bench_assignment"})
        out["tiles"].append({"path": str(path), "origin_zyx_um": list(origin), "n_cells": int(len(present)),
                             "bytes": path.stat().st_size,
                             "foreground_fraction": float(np.count_nonzero(labels) / labels.size)})
        del labels
    n_global = int(np.count_nonzero(np.bincount(coarse.ravel(), minlength=len(seeds) + 1)[1:]))
    out["n_cells_global"] = n_global
    del coarse
    # Spots: half per tile, uniform in the tile, genes incl. blanks.
    genes = [f"gene{g:03d}" for g in range(N_GENES)] + [f"Blank-{b}" for b in range(N_BLANKS)]
    n = spec["n_spots"]
    tile = (np.arange(n) >= n // 2).astype(np.int64)
    spots = pd.DataFrame({"tile": tile,
                          "z_px": rng.uniform(0, z - 1, n), "y_px": rng.uniform(0, y - 1, n),
                          "x_px": rng.uniform(0, x - 1, n),
                          "gene_id": np.asarray(genes, dtype=object)[rng.integers(0, len(genes), n)]})
    spots.to_parquet(folder / "spots.parquet", index=False)
    out["genes"] = genes[:N_GENES]                   # the counted genes (no blanks), as the stage passes them
    out["build_s"] = time.perf_counter() - t0
    (folder / "inputs.json").write_text(json.dumps(out, indent=1))
    return out


# measured child --------------------------------------------------------------------------------
def child(step, mode, folder):
    """One measurement: build the step's inputs, run it (``mode == 'run'``), print one JSON line."""
    import resource

    import numpy as np
    import pandas as pd

    from merfishflow.cells.assignment import GlobalCells, assign_spots, count_matrix, merge_cells
    from merfishflow.io.masks import read_masks

    folder = Path(folder)
    info = json.loads((folder / "inputs.json").read_text())
    files = [t["path"] for t in info["tiles"]]
    out = {"step": step, "mode": mode}

    def maxrss_kib():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def load_cells():
        d = np.load(folder / "cells.npz")
        mapping = {(int(t), int(lab)): int(c) for t, lab, c in zip(d["tile"], d["label"], d["cell"])}
        return GlobalCells(mapping, pd.read_parquet(folder / "cells.parquet"))

    labels = None
    t_in = time.perf_counter()
    # inputs -----------------------------------------------------------------------------------
    if step in ("merge", "assign"):
        mask_sets = [read_masks(p) for p in files]
        labels = [m.to_labels() for m in mask_sets]
        if step == "assign":      # mask sets stay resident, as in the stage (freeing them would let
            cells = load_cells()  # the step reuse their memory and hide its own peak)
            spots = pd.read_parquet(folder / "spots.parquet")
    elif step == "count":
        spots = pd.read_parquet(folder / "spots.parquet")
        spots["cell_id"] = np.load(folder / "cell_id.npy")
        cell_ids = pd.read_parquet(folder / "cells.parquet")["cell_id"].to_numpy()
    out["inputs_s"] = time.perf_counter() - t_in
    if mode == "run":
        # the step ---------------------------------------------------------------------------------
        t0 = time.perf_counter()
        if step == "read":
            mask_sets = [read_masks(p) for p in files]
            out["read_masks_s"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            labels = [m.to_labels() for m in mask_sets]
            out["to_labels_s"] = time.perf_counter() - t1
            out["n_cells"] = [m.n_cells for m in mask_sets]
            out["mask_bool_bytes"] = int(sum(c.mask.nbytes for m in mask_sets for c in m.cells))
        elif step == "merge":
            marks = []
            cells = merge_cells(mask_sets, lambda t: labels[t], progress=lambda msg: marks.append(time.perf_counter()))
            out["pairs_s"] = (marks[-1] - t0) if marks else 0.0   # overlap comparison (shared_instances)
            out["n_global_cells"] = len(cells.table)
            out["n_spanning"] = int((cells.table["n_instances"] > 1).sum())
        elif step == "assign":
            cell_id = assign_spots(spots, lambda t: labels[t], cells)
            out["n_spots"] = len(spots)
            out["n_inside"] = int((cell_id > 0).sum())
        elif step == "count":
            matrix = count_matrix(spots, cell_ids, info["genes"])
            out["n_counted"] = int(matrix.sum())
            out["matrix_shape"] = list(matrix.shape)
        out["step_s"] = time.perf_counter() - t0
    out["maxrss_kib"] = maxrss_kib()
    if mode == "run":
        # outputs the later steps read (after the peak was read) ------------------------------------
        if step == "merge":
            keys = np.array(list(cells.instance_to_cell.keys()), np.int64).reshape(-1, 2)
            np.savez(folder / "cells.npz", tile=keys[:, 0], label=keys[:, 1],
                     cell=np.array(list(cells.instance_to_cell.values()), np.int64))
            cells.table.to_parquet(folder / "cells.parquet", index=False)
        elif step == "assign":
            np.save(folder / "cell_id.npy", cell_id)
        # yardstick: copy one tile's label volume into another, already touched, one -------------
        if labels is None:
            shape = tuple(info["spec"]["shape"])
            labels = [np.ones(shape, np.uint32), np.zeros(shape, np.uint32)]
        copies = []
        for _ in range(3):
            t0 = time.perf_counter()
            np.copyto(labels[1], labels[0])
            copies.append(time.perf_counter() - t0)
        out["copy_s"] = sorted(copies)[1]
    print(json.dumps(out), flush=True)


# parent --------------------------------------------------------------------------------------
def spawn(*args):
    r = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def measure_case(name, spec, workdir, rebuild):
    import statistics

    folder = case_dir(workdir, name, spec)
    if rebuild or not (folder / "inputs.json").exists() or \
            json.loads((folder / "inputs.json").read_text())["spec"]["shape"] != list(spec["shape"]):
        print(f"{name}: building inputs in {folder} ...", flush=True)
        info = spawn("--build", str(folder), json.dumps(spec))
    else:
        info = json.loads((folder / "inputs.json").read_text())
    print(f"{name}: {json.dumps({k: v for k, v in info.items() if k != 'genes'})}", flush=True)
    z, y, x = spec["shape"]
    nvox = 2 * z * y * x                             # the pair's voxels
    rows = []
    for step in STEPS:
        base = spawn("--child", step, "baseline", str(folder))
        runs = [spawn("--child", step, "run", str(folder)) for _ in range(spec["runs"])]
        run = dict(runs[0])
        for key in ("step_s", "copy_s", "read_masks_s", "to_labels_s", "pairs_s", "maxrss_kib"):
            if key in run:
                run[key] = statistics.median(r[key] for r in runs)
        inc = (run["maxrss_kib"] - base["maxrss_kib"]) * 1024
        row = dict(case=name, shape=f"{z}x{y}x{x}", step=step, run=run, base_gb=base["maxrss_kib"] * 1024 / 1e9,
                   inc_gb=inc / 1e9, bytes_per_voxel=inc / nvox, ratio=run["step_s"] / run["copy_s"],
                   load=_common.load_average())
        rows.append(row)
        print(json.dumps(row), flush=True)
    return info, rows


def table_lines(name, info, rows, planes_note):
    spec = info["spec"]
    z, y, x = spec["shape"]
    tiles = info["tiles"]
    lines = [f"**{name}**: 2 tiles of {z} x {y} x {x} ({planes_note}), overlap {spec['overlap']:.0%} in x "
             f"({x - info['x_shift_px']} px), {tiles[0]['n_cells']} + {tiles[1]['n_cells']} cells "
             f"({info['n_cells_global']} distinct; seed spacing {info['spacing_um']:.2f} µm, foreground "
             f"{tiles[0]['foreground_fraction']:.0%}), mask files {tiles[0]['bytes'] / 1e6:.3g} + "
             f"{tiles[1]['bytes'] / 1e6:.3g} MB, {spec['n_spots']} spots; inputs built in {info['build_s']:.3g} s; "
             f"{spec['runs']} run(s) per step (median).", "",
             "| step | seconds | detail | label copy s (yardstick) | ratio | peak RSS increase GB | bytes/voxel (pair) "
             "| baseline peak GB | load avg |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        run = r["run"]
        if r["step"] == "read":
            label = "read_masks + to_labels (both tiles)"
            detail = (f"read_masks {run['read_masks_s']:.3g} s, to_labels {run['to_labels_s']:.3g} s; "
                      f"unpacked bool masks {run['mask_bool_bytes'] / 1e6:.4g} MB")
        elif r["step"] == "merge":
            label = "merge_cells"
            detail = (f"overlap pair {run['pairs_s']:.3g} s, table {run['step_s'] - run['pairs_s']:.3g} s; "
                      f"{run['n_global_cells']} cells, {run['n_spanning']} span the overlap")
        elif r["step"] == "assign":
            label = "assign_spots"
            detail = f"{run['n_inside']} of {run['n_spots']} spots in a cell"
        else:
            label = "count_matrix"
            detail = f"{run['matrix_shape'][0]} x {run['matrix_shape'][1]}, {run['n_counted']} counted"
        lines.append(f"| {label} | {run['step_s']:.3g} | {detail} | {run['copy_s']:.3g} | {r['ratio']:.3g} | "
                     f"{r['inc_gb']:.3f} | {r['bytes_per_voxel']:.2f} | {r['base_gb']:.2f} | {r['load']} |")
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--planes", type=int, help="planes of the big case instead of 100 (to extrapolate)")
    ap.add_argument("--workdir", default="/tmp", help="where the mask files and spot tables go (default /tmp)")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the inputs even if they exist")
    ap.add_argument("--append", action="store_true", help="append the results to benchmarks/RESULTS.md")
    ap.add_argument("--build", nargs=2, metavar=("FOLDER", "SPEC"), help=argparse.SUPPRESS)
    ap.add_argument("--child", nargs=3, metavar=("STEP", "MODE", "FOLDER"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build:
        spec = json.loads(args.build[1])
        spec["shape"] = tuple(spec["shape"])
        print(json.dumps(build(args.build[0], spec)))
        return
    if args.child:
        child(*args.child)
        return
    t_all = time.perf_counter()
    info_machine = _common.machine_info()
    sections = []
    for name in args.cases:
        spec = dict(CASES[name])
        note = "as issue 5 asks" if name == "big" else "demo-like"
        if name == "big" and args.planes and args.planes != spec["shape"][0]:
            spec["shape"] = (args.planes, *spec["shape"][1:])
            spec["cells_per_tile"] = int(round(CASES["big"]["cells_per_tile"] * args.planes / CASES["big"]["shape"][0]))
            note = f"**{args.planes} planes, not 100**: scale seconds and memory x{100 / args.planes:g} for 100"
        info, rows = measure_case(name, spec, args.workdir, args.rebuild)
        sections.append((name, info, rows, note))
    total = time.perf_counter() - t_all
    print(f"total {total:.1f} s")
    if args.append:
        lines = ["", "## Assignment (`merfishflow.cells.assignment`: read masks, merge_cells, assign_spots, count_matrix): "
                 "seconds, peak memory (`bench_assignment.py`)", "",
                 "Machine: " + _common.machine_line(info_machine) + ".",
                 "Command: `python benchmarks/bench_assignment.py " + " ".join(sys.argv[1:]) +
                 f"` ({total:.0f} s in all, input building included).",
                 "Each step in a fresh child; peak RSS increase = child's `ru_maxrss` after the step minus that of a "
                 "baseline child that builds the same inputs (see the script's docstring). Yardstick: `np.copyto` of "
                 "one tile's uint32 label volume into another (8 B moved per voxel), same child; ratio = step s / copy s. "
                 "bytes/voxel = increase / voxels of both tiles.", ""]
        for name, info, rows, note in sections:
            lines += table_lines(name, info, rows, note) + [""]
        with RESULTS.open("a") as fh:
            fh.write("\n".join(lines))


if __name__ == "__main__":
    main()

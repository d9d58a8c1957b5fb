"""Benchmark of round-to-round registration (merfishflow.image.registration) on one simulated tile.

Simulates one tile with ``--rounds`` rounds (``merfishflow.simulation``,
default deformation 0.7 px RMS) and registers every round's fiducial onto
round 0's, timing each step per round:

* ``rigid_shift`` (FFT phase correlation, float32),
* ``optical_flow_field`` (block mean, ILK optical flow, smoothing),
* ``apply_transform`` of the fiducial with shift + field (order 1),

and reports the total, the optical flow's share, and as the machine-limit
yardstick the time of one 3D ``scipy.fft.rfftn`` of the same float32 volume
(median of ``--repeats``) measured in the same run: registration seconds per
round / rfftn seconds says how many "FFTs of the volume" a round costs.
Accuracy against the ground truth is reported too (rigid shift error, and
the RMS residual displacement over the textured voxels before/after the field).

Usage
-----
    python benchmarks/bench_registration.py                          # 8 rounds of 32 x 256 x 256
    python benchmarks/bench_registration.py --shape 16 128 128 --rounds 4   # quick check
    python benchmarks/bench_registration.py --append                 # also append to benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
BORDER = 3


def simulate(root: Path, shape, rounds, seed, amplitude):
    from merfishflow.simulation import simulate_experiment

    # The codebook does not matter here: a small one that any number of rounds allows.
    params = {"seed": seed, "n_tiles_yx": [1, 1], "n_rounds": rounds, "n_readout_channels": 2,
              "image_shape_zyx": list(shape), "n_genes": 2, "n_blanks": 0, "codeword_weight": 2,
              "min_hamming_distance": 2, "deformation_amplitude_px": amplitude,
              # Always write the true deformation fields (the accuracy check needs them).
              "deformation_field_max_mb": 1 << 20}
    t0 = time.perf_counter()
    simulate_experiment(root, params)
    return time.perf_counter() - t0


def load(root: Path, rounds):
    import tifffile

    dark = tifffile.imread(root / "raw_data" / "camera_dark_frame.tif")
    fid = [tifffile.imread(root / "raw_data" / "tile0000" / f"round{r:04d}.tif")[0].astype(np.float32) - dark
           for r in range(rounds)]
    transforms = json.loads((root / "ground_truth" / "transforms.json").read_text())
    return fid, transforms


def time_rfftn(volume, repeats):
    from scipy import fft

    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fft.rfftn(volume)
        times.append(time.perf_counter() - t0)
    return times


def run(args):
    import tifffile

    from merfishflow.image import registration as reg

    shape = tuple(args.shape)
    with tempfile.TemporaryDirectory(dir=args.tmpdir) as tmp:
        root = Path(tmp) / "sim"
        sim_s = simulate(root, shape, args.rounds, args.seed, args.amplitude)
        fid, transforms = load(root, args.rounds)
        deformation = {}
        for r in range(1, args.rounds):
            path = root / "ground_truth" / f"deformation_tile0000_round{r:04d}.tif"
            if args.amplitude > 0 and not path.exists():
                raise RuntimeError(f"the simulator did not write {path.name}")
            deformation[r] = tifffile.imread(path) if path.exists() else None

    ref = fid[0]
    mask = ref > np.median(ref)
    inner = np.zeros_like(mask)
    inner[BORDER:-BORDER, BORDER:-BORDER, BORDER:-BORDER] = True
    mask &= inner
    fft_s = time_rfftn(ref, args.repeats)
    downsample = tuple(args.downsample) if len(args.downsample) == 3 else args.downsample[0]

    rows, shift_err, before, after = [], [], [], []
    for r in range(1, args.rounds):
        t0 = time.perf_counter()
        shift = reg.rigid_shift(ref, fid[r])
        t1 = time.perf_counter()
        field = reg.optical_flow_field(ref, fid[r], shift_zyx_px=shift, downsample=downsample)
        t2 = time.perf_counter()
        reg.apply_transform(fid[r], shift, field, downsample=downsample)
        t3 = time.perf_counter()
        rows.append({"round": r, "rigid_s": t1 - t0, "flow_s": t2 - t1, "apply_s": t3 - t2})
        truth_shift = np.array(transforms["rounds"][r]["shift_zyx_px"])
        shift_err.append(shift - truth_shift)
        truth = truth_shift.reshape(3, 1, 1, 1).astype(np.float32)
        if deformation[r] is not None:
            truth = truth + deformation[r]
        truth = np.broadcast_to(truth, (3,) + shape)
        total = reg.total_displacement(shift, field, shape, downsample)
        rigid = np.broadcast_to(shift.reshape(3, 1, 1, 1), truth.shape)
        before.append(np.mean(np.sum((rigid - truth)[:, mask] ** 2, axis=0)))
        after.append(np.mean(np.sum((total - truth)[:, mask] ** 2, axis=0)))

    sums = {k: float(sum(row[k] for row in rows)) for k in ("rigid_s", "flow_s", "apply_s")}
    total_s = sum(sums.values())
    fft_median = _common.median(fft_s)
    return {
        "machine": _common.machine_info(),
        "shape_zyx": list(shape),
        "rounds": args.rounds,
        "downsample": downsample,
        "deformation_amplitude_px": args.amplitude,
        "simulation_s": sim_s,
        "per_round": rows,
        "sum_s": sums,
        "total_s": total_s,
        "flow_share": sums["flow_s"] / total_s,
        "rfftn_s": fft_s,
        "rfftn_median_s": fft_median,
        "per_round_over_rfftn": total_s / (args.rounds - 1) / fft_median,
        "shift_rms_error_px": float(np.sqrt(np.mean(np.square(shift_err)))),
        "residual_rms_rigid_px": float(np.sqrt(np.mean(before))),
        "residual_rms_field_px": float(np.sqrt(np.mean(after))),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "load_average": _common.load_average(),
    }


def report(r, command):
    z, y, x = r["shape_zyx"]
    n = r["rounds"] - 1
    s = r["sum_s"]
    lines = [
        f"## Registration (`merfishflow.image.registration`): one tile, rigid shift + optical flow (downsample "
        f"{r['downsample']})",
        "",
        f"Machine: {_common.machine_line(r['machine'])}",
        f"Reproduce: `{command}`",
        "",
        f"One simulated tile, {r['rounds']} rounds of {z} x {y} x {x} voxels (fiducial channel, float32, dark frame "
        f"subtracted), deformation {r['deformation_amplitude_px']} px RMS; rounds 1..{n} registered onto round 0 "
        f"with the defaults (`rigid_shift`: phase correlation, upsample 20; `optical_flow_field`: "
        f"downsample {r['downsample']}, ILK radius 2, 3 warps, Gaussian smoothing 3 coarse voxels; "
        f"`apply_transform`: order 1). Simulation took {r['simulation_s']:.1f} s (not counted).",
        "",
        "| step | seconds, all rounds | per round | share |",
        "|---|---|---|---|",
        f"| `rigid_shift` | {s['rigid_s']:.2f} | {s['rigid_s'] / n:.3f} | {s['rigid_s'] / r['total_s']:.0%} |",
        f"| `optical_flow_field` | {s['flow_s']:.2f} | {s['flow_s'] / n:.3f} | **{r['flow_share']:.0%}** |",
        f"| `apply_transform` (shift + field) | {s['apply_s']:.2f} | {s['apply_s'] / n:.3f} | "
        f"{s['apply_s'] / r['total_s']:.0%} |",
        f"| **total** | **{r['total_s']:.2f}** | {r['total_s'] / n:.3f} | 100% |",
        "",
        f"Machine-limit yardstick: one `scipy.fft.rfftn` of the same float32 volume takes "
        f"{r['rfftn_median_s'] * 1e3:.1f} ms (median of {', '.join(f'{t * 1e3:.1f}' for t in r['rfftn_s'])} ms); "
        f"**one round's registration costs {r['per_round_over_rfftn']:.0f} such FFTs**.",
        f"Accuracy against the ground truth: rigid shift RMS error {r['shift_rms_error_px']:.3f} px (vs "
        f"`shift_zyx_px`, which the tile's mean deformation offsets); residual displacement RMS over textured "
        f"voxels {r['residual_rms_rigid_px']:.3f} px with the rigid shift only, "
        f"**{r['residual_rms_field_px']:.3f} px with the field**.",
        f"Peak RSS of the benchmark process {r['peak_rss_mb']:.0f} MB (includes the simulation); load average "
        f"after the run {r['load_average']}.",
        "",
    ]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=[32, 256, 256], metavar=("Z", "Y", "X"))
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--downsample", type=int, nargs="+", default=[1, 3, 3],
                        help="optical-flow block size: one int or three (z y x)")
    parser.add_argument("--amplitude", type=float, default=0.7, help="deformation_amplitude_px of the simulation")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the rfftn baseline (median)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--tmpdir", default=None)
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    parser.add_argument("--append", action="store_true", help=f"append the report to {RESULTS}")
    args = parser.parse_args()
    if len(args.downsample) not in (1, 3):
        parser.error("--downsample takes one or three integers")
    result = run(args)
    command = "python benchmarks/bench_registration.py " + " ".join(sys.argv[1:])
    text = report(result, command.strip())
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if args.append:
        # Append only (others add their own sections to the same file).
        with open(RESULTS, "a", encoding="utf-8") as fh:
            if fh.tell() > 0:
                fh.write("\n")
            fh.write(text)
        print(f"appended to {os.path.relpath(RESULTS)}")


if __name__ == "__main__":
    main()

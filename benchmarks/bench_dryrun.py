"""Benchmark of workflow planning: ``snakemake -n`` on a large real (non-simulated) experiment.

Writes the metadata of an experiment with ``--tiles`` tiles x ``--rounds``
rounds x 3 channels (fiducial + 2 readouts, so ``2 * rounds`` bits; 16 for
the default 8 rounds): experiment.yaml, codebook.csv, exp_order.csv,
stage_positions.csv, and *empty* placeholder ``tileNNNN/roundNNNN.tif`` files
so that the workflow's existence check passes (a dry run reads no pixels,
so ``image_shape_zyx`` can be as large as a real acquisition). It then times

    snakemake -s <repo>/Snakefile --directory <tmp>/work --configfile <tmp>/config.yaml \
              --cores 2 -n --quiet rules

with ``simulation: {enabled: false}`` and ``experiment_dir`` pointing at the
experiment. Target: <= 20 s for 1000 tiles (issue 17). The machine-limit reference
measured in the same run is the same dry run of a **1-tile** experiment
(Snakemake's start-up + this workflow's fixed cost, nothing that scales with
tiles); the wall times of ``python -c "import snakemake"`` (the package
only) and ``python -m snakemake --version`` (the CLI's imports) are reported
too.

With ``--profile``, the large dry run is also run once under cProfile and
the top functions by cumulative and by own time are printed.

Usage
-----
    python benchmarks/bench_dryrun.py                  # 1000 tiles x 8 rounds, 3 repeats
    python benchmarks/bench_dryrun.py --tiles 100 --repeats 1 --profile

Everything is written under a temporary folder (``--tmpdir``) deleted at the end.
"""

from __future__ import annotations

import argparse
import io
import json
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def make_case(base: Path, n_tiles: int, n_rounds: int, shape_zyx) -> tuple[Path, Path]:
    """Experiment metadata + empty TIFFs, and a config; returns (workdir, configfile)."""
    experiment = base / "experiment"
    _common.write_metadata(experiment, shape_zyx=shape_zyx, n_tiles=n_tiles, n_rounds=n_rounds,
                           dark_frame=False, seed=0)
    _common.write_empty_tiffs(experiment, n_tiles, n_rounds)
    work = base / "work"
    work.mkdir()
    config = _common.write_config(base / "config.yaml", experiment)
    return work, config


def snakemake_cmd(work: Path, config: Path) -> list[str]:
    return ["-m", "snakemake", "-s", str(_common.REPO / "Snakefile"), "--directory", str(work),
            "--configfile", str(config), "--cores", "2", "-n", "--quiet", "rules"]


def parse_job_counts(text: str) -> dict:
    """``{rule: count, "total": n}`` from the ``--quiet rules`` job table."""
    counts, in_table = {}, False
    for line in text.splitlines():
        parts = line.split()
        if parts[:2] == ["job", "count"]:
            in_table = True
            continue
        if in_table and len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
            if parts[0] == "total":
                break
    return counts


def timed_run(cmd: list[str], cwd: Path) -> tuple[float, str]:
    t0 = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=_common.snakemake_env())
    elapsed = time.perf_counter() - t0
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                           f"{result.stderr[-3000:]}")
    return elapsed, result.stdout + result.stderr


def profile_dryrun(work: Path, config: Path, out: Path, top: int) -> str:
    """Run the dry run under cProfile; the top ``top`` entries by cumulative and own time."""
    cmd = [sys.executable, "-m", "cProfile", "-o", str(out), *snakemake_cmd(work, config)]
    elapsed, _ = timed_run(cmd, work)
    text = io.StringIO()
    stats = pstats.Stats(str(out), stream=text)
    stats.strip_dirs()
    text.write(f"cProfile run: {elapsed:.1f} s wall (profiling overhead included)\n")
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    return text.getvalue()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiles", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--shape", type=int, nargs=3, default=[100, 2048, 2048], metavar=("Z", "Y", "X"),
                        help="image_shape_zyx written to experiment.yaml (nothing is read)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of every timing (median reported)")
    parser.add_argument("--profile", action="store_true", help="also run the large dry run under cProfile")
    parser.add_argument("--top", type=int, default=25, help="profile entries printed per ordering")
    parser.add_argument("--tmpdir", default=None)
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)

    results = {"machine": _common.machine_info(), "tiles": args.tiles, "rounds": args.rounds,
               "shape_zyx": args.shape}
    with tempfile.TemporaryDirectory(prefix="merfishflow-bench-dryrun-", dir=args.tmpdir) as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        big = make_case(tmp / "big", args.tiles, args.rounds, args.shape)
        small = make_case(tmp / "small", 1, args.rounds, args.shape)
        print(f"setup: {args.tiles} x {args.rounds} placeholder TIFFs in {time.perf_counter() - t0:.1f} s",
              flush=True)

        load = [_common.load_average()]
        import_s, version_s, small_s, big_s = [], [], [], []
        for i in range(args.repeats):
            import_s.append(timed_run([sys.executable, "-c", "import snakemake"], tmp)[0])
            version_s.append(timed_run([sys.executable, "-m", "snakemake", "--version"], tmp)[0])
            elapsed, out = timed_run([sys.executable, *snakemake_cmd(*small)], small[0])
            small_s.append(elapsed)
            small_jobs = parse_job_counts(out)
            elapsed, out = timed_run([sys.executable, *snakemake_cmd(*big)], big[0])
            big_s.append(elapsed)
            big_jobs = parse_job_counts(out)
            load.append(_common.load_average())
            print(f"repeat {i + 1}: import snakemake {import_s[-1]:.2f} s, snakemake --version {version_s[-1]:.2f} s, 1-tile dry run {small_s[-1]:.2f} s "
                  f"({small_jobs.get('total')} jobs), {args.tiles}-tile dry run {big_s[-1]:.2f} s "
                  f"({big_jobs.get('total')} jobs)", flush=True)
        results.update(load_average=load, import_s=import_s, version_s=version_s, small_s=small_s, big_s=big_s, small_jobs=small_jobs, big_jobs=big_jobs)
        if args.profile:
            results["profile"] = profile_dryrun(*big, tmp / "dryrun.prof", args.top)

    print()
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


def report(r: dict) -> str:
    med = _common.median
    big, small, imp = med(r["big_s"]), med(r["small_s"]), med(r["import_s"])
    jobs = r["big_jobs"]
    per_rule = {k: v for k, v in jobs.items() if k != "total"}
    by_rule = ", ".join(f"{k} {v}" for k, v in per_rule.items())
    extra_jobs = max(1, (jobs.get("total") or 0) - (r["small_jobs"].get("total") or 0))
    fmt = lambda xs: ", ".join(f"{x:.2f}" for x in xs)  # noqa: E731
    lines = [
        f"Machine: {_common.machine_line(r['machine'])}",
        f"Experiment: {r['tiles']} tiles x {r['rounds']} rounds x 3 channels, image_shape_zyx {r['shape_zyx']}, "
        f"{len(r['big_s'])} repeats (median).",
        "",
        "| measurement | seconds (each repeat) | median s | jobs |",
        "|---|---|---|---|",
        f"| `python -c \"import snakemake\"` | {fmt(r['import_s'])} | {imp:.2f} | - |",
        f"| `python -m snakemake --version` | {fmt(r['version_s'])} | {med(r['version_s']):.2f} | - |",
        f"| dry run, 1 tile (reference) | {fmt(r['small_s'])} | {small:.2f} | {r['small_jobs'].get('total')} |",
        f"| dry run, {r['tiles']} tiles | {fmt(r['big_s'])} | {big:.2f} | {jobs.get('total')} |",
        "",
        f"Jobs of the large dry run: {jobs.get('total')} in total: {by_rule}.",
        "",
        f"**{r['tiles']}-tile dry run: {big:.1f} s (target <= 20 s, issue 17: {'met' if big <= 20 else 'NOT met'}).** "
        f"Ratio vs the 1-tile dry run (machine-limit reference): {big / small:.1f} x; "
        f"vs `import snakemake`: {big / imp:.1f} x. Cost per job beyond the 1-tile run: "
        f"{(big - small) / extra_jobs * 1e3:.2f} ms.",
        f"Load average (1/5/15 min) before the first repeat and after each: {'; '.join(r['load_average'])}.",
    ]
    if "profile" in r:
        lines += ["", "```", r["profile"].rstrip(), "```"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

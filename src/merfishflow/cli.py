"""Command line: ``merfishflow simulate | validate | status | unlock``."""

from __future__ import annotations

import argparse
import sys

from .errors import MerfishflowError


def _simulate(args):
    import yaml

    from .simulation import simulate_experiment

    params = {}
    if args.params:
        with open(args.params) as f:
            params = yaml.safe_load(f) or {}
    if args.seed is not None:
        params["seed"] = args.seed
    out = simulate_experiment(args.experiment_dir, params, progress=print, overwrite=args.overwrite)
    print(f"wrote {out['raw_data']} and {out['ground_truth']}")


def _validate(args):
    from .io.metadata import check_raw_files, load_experiment

    experiment = load_experiment(args.experiment_dir)
    n_tiffs = check_raw_files(experiment, args.experiment_dir)
    print(f"{args.experiment_dir}: raw_data is valid: {len(experiment.tiles)} tiles, {len(experiment.rounds)} rounds, "
          f"{experiment.n_bits} bits, {len(experiment.gene_ids)} barcodes; {n_tiffs} TIFF headers checked")


def _status(args):
    from .io.metadata import load_experiment
    from .workflow.status import format_status

    print(format_status(load_experiment(args.experiment_dir, check_tiffs=False), args.experiment_dir))


def _unlock(args):
    from .workflow.lock import unlock

    print(unlock(args.experiment_dir))


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="merfishflow", description="Tools around the merfishflow Snakemake workflow for 3D MERFISH: simulate "
        "an experiment, validate raw_data, show which stages of a datastore are complete. The pipeline itself "
        "runs with snakemake (see README.md).")
    parser.add_argument("--version", action="version", version=f"merfishflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser("simulate", help="write a simulated experiment (raw_data/ + ground_truth/)")
    sim.add_argument("experiment_dir")
    sim.add_argument("--params", help="YAML file of simulation parameters (docs/simulator.md)")
    sim.add_argument("--seed", type=int)
    sim.add_argument("--overwrite", action="store_true", help="replace existing raw_data/ and ground_truth/")
    sim.set_defaults(func=_simulate)
    val = sub.add_parser("validate", help="check an experiment's raw_data against docs/raw_data.md")
    val.add_argument("experiment_dir")
    val.set_defaults(func=_validate)
    st = sub.add_parser("status", help="which stages are complete, read from the datastore's markers")
    st.add_argument("experiment_dir")
    st.set_defaults(func=_status)
    un = sub.add_parser("unlock", help="remove the experiment lock a run that has ended left behind")
    un.add_argument("experiment_dir")
    un.set_defaults(func=_unlock)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except MerfishflowError as err:
        print(f"merfishflow: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

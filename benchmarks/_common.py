"""Shared helpers of the benchmark scripts: machine description and synthetic raw_data.

Not part of the test suite. The raw_data written here follows
``docs/raw_data.md`` exactly (experiment.yaml, codebook.csv, exp_order.csv,
stage_positions.csv, an optional dark frame and one multi-page uint16 TIFF
per tile and round) but skips the simulator: pixels are Poisson counts on a
camera offset, which compress like real sparse fluorescence data and are
written in seconds.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]

# Fiducial first, then the readouts: (name, role, excitation_um, emission_um).
CHANNELS = (
    ("polyDT", "fiducial", 0.488, 0.520),
    ("readout_561", "readout", 0.561, 0.590),
    ("readout_647", "readout", 0.647, 0.680),
)
OFFSET_ADU = 100.0
E_PER_ADU = 0.5
DARK_FRAME = "camera_dark_frame.tif"


# peak memory -----------------------------------------------------------------------------------
# A minimal "meter" interpreter starts the measured child and reports getrusage(RUSAGE_CHILDREN).
# ru_maxrss survives fork + exec on Linux, so forking the child straight from a (large)
# benchmark process would report that process's RSS; the meter's own RSS (~10 MB) is below any child's.
METER = ("import resource, subprocess, sys; "
         "rc = subprocess.call(sys.argv[1:]); "
         "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss if rc == 0 else -1)")


def child_peak_rss_kib(script, args) -> int:
    """Peak RSS in KiB of ``python <script> <args>``, as its parent's ``RUSAGE_CHILDREN`` reports it."""
    import subprocess

    cmd = [sys.executable, "-S", "-c", METER, sys.executable, str(Path(script).resolve()), *args]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()
    if not out or int(out[-1]) < 0:
        raise RuntimeError(f"child {script} {args} failed")
    return int(out[-1])


# machine ---------------------------------------------------------------------------------------
def machine_info() -> dict:
    """nproc, RAM, CPU model, Python and the versions of the packages that matter."""
    from importlib.metadata import version

    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:
        nproc = os.cpu_count()
    packages = {}
    for name in ("numpy", "tensorstore", "tifffile", "snakemake"):
        try:
            packages[name] = version(name)
        except Exception:  # noqa: BLE001 - a missing package is just not reported
            packages[name] = "n/a"
    return {"nproc": nproc, "ram_gib": round(ram_gib, 1), "cpu": model,
            "python": platform.python_version(), "kernel": platform.release(), "packages": packages,
            "code": code_state()}


def code_state() -> str:
    """HEAD commit and the tracked files changed in the working tree (read-only git calls)."""
    import subprocess

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()
        except OSError:
            return ""

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = git("diff", "--name-only", "HEAD").split()
    return f"commit {head}" + (f" + uncommitted changes to {', '.join(changed)}" if changed else "")


def load_average() -> str:
    return " / ".join(f"{v:.2f}" for v in os.getloadavg())


def stage_module(name: str):
    """``merfishflow.stages.<name>`` (current layout) or the older top-level module.

    ``name`` is ``"ingest"`` or ``"init"`` (the latter was ``merfishflow.calibration``).
    """
    import importlib

    old = {"ingest": "merfishflow.ingest", "init": "merfishflow.calibration"}[name]
    try:
        return importlib.import_module(f"merfishflow.stages.{name}")
    except ModuleNotFoundError:
        return importlib.import_module(old)


def machine_line(info: dict) -> str:
    pk = ", ".join(f"{k} {v}" for k, v in info["packages"].items())
    return (f"{info['nproc']} CPUs ({info['cpu']}), {info['ram_gib']} GiB RAM, Linux {info['kernel']}, "
            f"Python {info['python']}; {pk}. Code: {info['code']}")


def median(values):
    return statistics.median(values)


# synthetic raw_data ----------------------------------------------------------------------------
def write_metadata(root, *, shape_zyx, n_tiles, n_rounds=8, dark_frame=True, seed=0):
    """Write experiment.yaml, codebook.csv, exp_order.csv, stage_positions.csv (+ dark frame).

    Parameters
    ----------
    root : Path
        Experiment folder; ``root/raw_data`` is created.
    shape_zyx : tuple of 3 int
        ``image_shape_zyx`` of every tile image.
    n_tiles, n_rounds : int
        Tiles listed in stage_positions.csv; rounds in exp_order.csv. With
        the 2 readout channels of :data:`CHANNELS` there are ``2 * n_rounds``
        bits.
    dark_frame : bool
        Write a (Y, X) float32 dark frame with 0.1 % hot pixels (exercises
        the hot-pixel path of the correction); else the scalar offset is used.
    seed : int

    Returns
    -------
    Path
        ``root / "raw_data"``.
    """
    import tifffile

    rng = np.random.default_rng(seed)
    raw = Path(root) / "raw_data"
    raw.mkdir(parents=True, exist_ok=True)
    readouts = [c[0] for c in CHANNELS if c[1] == "readout"]
    n_bits = n_rounds * len(readouts)

    order = ["round," + ",".join(readouts)]
    order += [f"{r}," + ",".join(str(r * len(readouts) + k + 1) for k in range(len(readouts)))
              for r in range(n_rounds)]
    (raw / "exp_order.csv").write_text("\n".join(order) + "\n")

    header = "gene_id," + ",".join(f"bit{b:02d}" for b in range(1, n_bits + 1))
    rows = [header]
    for g in range(2 * n_bits):
        word = np.zeros(n_bits, dtype=int)
        word[rng.choice(n_bits, size=min(4, n_bits), replace=False)] = 1
        name = f"Blank-{g}" if g % 10 == 9 else f"gene{g:03d}"
        rows.append(name + "," + ",".join(map(str, word)))
    (raw / "codebook.csv").write_text("\n".join(rows) + "\n")

    z, y, x = shape_zyx
    step = 0.9 * y * 0.108
    side = int(np.ceil(np.sqrt(n_tiles)))
    pos = ["tile,stage_z_um,stage_y_um,stage_x_um"]
    pos += [f"{t},0.0,{(t // side) * step:.3f},{(t % side) * step:.3f}" for t in range(n_tiles)]
    (raw / "stage_positions.csv").write_text("\n".join(pos) + "\n")

    if dark_frame:
        dark = (OFFSET_ADU + rng.normal(0, 2, size=(y, x))).astype(np.float32)
        hot = rng.random((y, x)) < 1e-3
        dark[hot] += rng.uniform(50, 500, size=int(hot.sum())).astype(np.float32)
        tifffile.imwrite(raw / DARK_FRAME, dark)

    doc = {
        "format_version": 1,
        "voxel_size_zyx_um": [0.31, 0.108, 0.108],
        "image_shape_zyx": [int(z), int(y), int(x)],
        "tile_overlap_fraction": 0.1,
        "microscope": {"numerical_aperture": 1.3, "immersion_refractive_index": 1.4,
                       "sample_refractive_index": 1.4},
        "camera": {"e_per_adu": E_PER_ADU, "offset_adu": OFFSET_ADU,
                   "dark_frame": DARK_FRAME if dark_frame else None, "hot_pixel_map": None},
        "channels": [{"name": n, "role": r, "excitation_um": ex, "emission_um": em} for n, r, ex, em in CHANNELS],
    }
    (raw / "experiment.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return raw


def write_raw_tiff(path, shape_zyx, seed=0, n_channels=len(CHANNELS)):
    """One tile-round TIFF, ``C x Z`` pages of (Y, X) uint16 ADU, channel-major.

    Background ~ offset + Poisson(20 e-) / gain with a sparse set of bright
    spots, written plane by plane (the generator never holds more than one
    plane).

    Returns
    -------
    int
        Raw bytes written (pixel data only): ``2 * C * Z * Y * X``.
    """
    import tifffile

    z, y, x = shape_zyx
    rng = np.random.default_rng(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lam = np.full((y, x), 20.0, dtype=np.float64)
    spots = rng.random((y, x)) < 2e-3
    lam[spots] = rng.uniform(200, 3000, size=int(spots.sum()))

    def planes():
        for _ in range(n_channels * z):
            e = rng.poisson(lam)
            yield (OFFSET_ADU + e / E_PER_ADU + rng.normal(0, 1.5, size=(y, x))).clip(0, 65535).astype(np.uint16)

    with tifffile.TiffWriter(path) as tif:
        tif.write(planes(), shape=(n_channels * z, y, x), dtype=np.uint16, photometric="minisblack",
                  metadata=None)
    return 2 * n_channels * z * y * x


def write_empty_tiffs(root, n_tiles, n_rounds):
    """Empty ``tileNNNN/roundNNNN.tif`` placeholders: enough for the workflow's existence check."""
    raw = Path(root) / "raw_data"
    for t in range(n_tiles):
        folder = raw / f"tile{t:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        for r in range(n_rounds):
            (folder / f"round{r:04d}.tif").touch()


def write_config(path, experiment_dir, **sections) -> Path:
    """A workflow config for a real (non-simulated) experiment in ``experiment_dir``."""
    config = {"experiment_dir": str(experiment_dir), "simulation": {"enabled": False}}
    config.update(sections)
    Path(path).write_text(yaml.safe_dump(config, sort_keys=False))
    return Path(path)


def snakemake_env() -> dict:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env

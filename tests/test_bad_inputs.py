"""The bad-input matrix of docs/bad_inputs.md: one test per row, each through the real workflow.

Every row runs Snakemake as a user would (a subprocess) and checks that the run
- exits non-zero,
- says what is wrong, naming the file or key (in Snakemake's output or the failed job's log,
  which the default profile's ``show-failed-logs`` also prints), without a traceback in the log,
- marks nothing complete that the bad input fed, and writes no ``datastore.json``,
- deletes or changes no file that existed before (bytes and mtime of everything under the
  experiment folder except ``logs/``).

Bases: ``fresh`` is a new experiment (a copy of the demo's raw_data, ``simulation.enabled: false``)
with nothing computed yet; ``complete`` is a finished run (``demo_copy``) whose datastore is
altered on disk, then read by a new export (``exports/tile0000_readouts.ome.tif``, which reads every
readout's ``registered_decon_data``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import tifffile

from conftest import planned_jobs, run_snakemake, write_config
from merfishflow.io import datastore
from merfishflow.io.metadata import load_experiment
from merfishflow.io.paths import ExperimentPaths
from merfishflow.workflow.status import stage_states

pytestmark = pytest.mark.workflow

EXPORT = "experiment/qi2labdatastore/exports/tile0000_readouts.ome.tif"
INGEST_T1R2 = "experiment/qi2labdatastore/polyDT/tile0001/round0002.zarr/.zattrs"
CALIBRATIONS = "experiment/qi2labdatastore/calibrations.zarr/.zattrs"
BIT003 = "qi2labdatastore/readouts/tile0000/bit003.zarr"


@dataclass
class Row:
    base: str                      # "fresh" or "complete"
    change: Callable               # change(experiment_dir) -> None
    words: list                    # fragments the error must contain ({exp} = experiment folder)
    config: dict = field(default_factory=dict)
    targets: tuple = ()            # Snakemake targets (none: rule all)
    log: str | None = None         # the failed job's log, relative to the experiment folder
    not_complete: tuple = ()       # marker folders (relative to the experiment) that must not be complete


def edit(relative, old, new, count=1):
    def change(experiment_dir):
        path = experiment_dir / relative
        text = path.read_text()
        assert old in text, (relative, old)
        path.write_text(text.replace(old, new, count))
    return change


def edit_line(relative, line_number, new_line):
    def change(experiment_dir):
        path = experiment_dir / relative
        lines = path.read_text().splitlines(keepends=True)
        lines[line_number - 1] = new_line + "\n"
        path.write_text("".join(lines))
    return change


def delete(relative):
    return lambda experiment_dir: (experiment_dir / relative).unlink()


def write_bytes(relative, data: bytes):
    return lambda experiment_dir: (experiment_dir / relative).write_bytes(data)


def rewrite_tiff(relative, how):
    def change(experiment_dir):
        path = experiment_dir / relative
        tifffile.imwrite(path, how(tifffile.imread(path)))
    return change


def drop_marker_key(relative, key):
    def change(experiment_dir):
        path = experiment_dir / relative / ".zattrs"
        attrs = json.loads(path.read_text())
        del attrs[key]
        path.write_text(json.dumps(attrs, indent=2))
    return change


def edit_zarray_shape(relative):
    def change(experiment_dir):
        path = experiment_dir / relative / ".zarray"
        meta = json.loads(path.read_text())
        meta["shape"][0] -= 1
        path.write_text(json.dumps(meta))
    return change


ROWS = {
    # config ---------------------------------------------------------------------------------------------------
    "config-wrong-type": Row("fresh", lambda e: None, ["key 'correction.hot_pixel_sigma'",
                                                        "'high' is not of type 'number'"],
                             config={"correction": {"hot_pixel_sigma": "high"}}),
    "config-unknown-key": Row("fresh", lambda e: None, ["key 'deconvolution.iteration' is not a known key of "
                                                         "'deconvolution' (did you mean 'deconvolution.iterations'?"],
                              config={"deconvolution": {"iteration": 10}}),
    "config-decoding-typo": Row("fresh", lambda e: None, ["key 'decoding.distance_treshold' is not a known key"],
                                config={"decoding": {"distance_treshold": 0.5}}),
    "config-decoding-string": Row("fresh", lambda e: None, ["key 'decoding.distance_threshold': '0.5' is not of "
                                                            "type 'number'"],
                                  config={"decoding": {"distance_threshold": "0.5"}}),
    "config-segmentation-range": Row("fresh", lambda e: None, ["key 'segmentation.min_contrast': 0.5 is less than or "
                                                               "equal to the minimum of 1"],
                                     config={"segmentation": {"min_contrast": 0.5}}),
    "config-assignment-type": Row("fresh", lambda e: None, ["key 'assignment.expand_um': 'far' is not of type"],
                                  config={"assignment": {"expand_um": "far"}}),
    "config-out-of-range": Row("fresh", lambda e: None, ["key 'filtering.target_fdr'",
                                                          "1.5 is greater than or equal to the maximum of 1"],
                               config={"filtering": {"target_fdr": 1.5}}),
    "config-no-raw-data": Row("fresh", lambda e: shutil.rmtree(e / "raw_data"),
                              ["{exp}/raw_data: raw_data folder not found"]),
    # raw data: experiment.yaml, stage positions, TIFFs --------------------------------------------------------
    "yaml-na-too-high": Row("fresh", edit("raw_data/experiment.yaml", "numerical_aperture: 1.3",
                                          "numerical_aperture: 1.6"),
                            ["{exp}/raw_data/experiment.yaml: microscope.numerical_aperture got 1.6; "
                             "expected a number in (0, immersion_refractive_index=1.4)"]),
    "yaml-invalid": Row("fresh", edit("raw_data/experiment.yaml", "channels:\n", "channels: [\n"),
                        ["{exp}/raw_data/experiment.yaml: not valid YAML"]),
    "yaml-bad-role": Row("fresh", edit("raw_data/experiment.yaml", "role: readout", "role: readuot"),
                         ["{exp}/raw_data/experiment.yaml: channels[1].role got 'readuot'; "
                          "expected 'fiducial' or 'readout'"]),
    "stage-not-a-number": Row("fresh", edit_line("raw_data/stage_positions.csv", 3, "1,0.0,abc,0.0"),
                              ["{exp}/raw_data/stage_positions.csv: line 3, column 'stage_y_um': "
                               "'abc' is not a number"]),
    "exp-order-bit-twice": Row("fresh", edit_line("raw_data/exp_order.csv", 3, "1,1,4"),
                               ["{exp}/raw_data/exp_order.csv: line 3, column 'readout_561': bit 1 is already "
                                "imaged on line 2"]),
    "tiff-missing": Row("fresh", delete("raw_data/tile0001/round0002.tif"),
                        ["{exp}/raw_data/tile0001/round0002.tif: raw TIFF not found"]),
    "tiff-float32": Row("fresh", rewrite_tiff("raw_data/tile0001/round0002.tif", lambda d: d.astype(np.float32)),
                        ["{exp}/raw_data/tile0001/round0002.tif: dtype float32; expected uint16 camera counts"],
                        targets=(INGEST_T1R2,), log="logs/ingest/tile0001.log",
                        not_complete=("qi2labdatastore/polyDT/tile0001/round0002.zarr",
                                      "qi2labdatastore/readouts/tile0001/bit005.zarr")),
    "tiff-not-a-tiff": Row("fresh", write_bytes("raw_data/tile0001/round0002.tif", b"not a tiff at all" * 10),
                           ["{exp}/raw_data/tile0001/round0002.tif: cannot be read as a TIFF"],
                           targets=(INGEST_T1R2,), log="logs/ingest/tile0001.log",
                           not_complete=("qi2labdatastore/polyDT/tile0001/round0002.zarr",)),
    "dark-frame-shape": Row("fresh", rewrite_tiff("raw_data/camera_dark_frame.tif", lambda d: d[:40]),
                            ["{exp}/raw_data/camera_dark_frame.tif: shape (40, 48); camera.dark_frame must be one "
                             "(Y, X) = (48, 48) image"],
                            targets=(CALIBRATIONS,), log="logs/init/init.log",
                            not_complete=("qi2labdatastore/calibrations.zarr",)),
    "yaml-unknown-key": Row("fresh", edit("raw_data/experiment.yaml", "sample_refractive_index",
                                          "sample_refractive_indx"),
                            ["{exp}/raw_data/experiment.yaml: unknown key 'microscope.sample_refractive_indx' "
                             "(did you mean 'sample_refractive_index'?"]),
    "yaml-key-twice": Row("fresh", edit("raw_data/experiment.yaml", "format_version: 1\n",
                                        "format_version: 1\nformat_version: 1\n"),
                          ["{exp}/raw_data/experiment.yaml: line 2: key 'format_version' is given twice "
                           "(first on line 1)"]),
    "stage-negative-tile": Row("fresh", edit_line("raw_data/stage_positions.csv", 3, "-1,0.0,0.0,0.0"),
                               ["{exp}/raw_data/stage_positions.csv: line 3: tile -1 is negative"]),
    "tiff-zero-bytes": Row("fresh", write_bytes("raw_data/tile0001/round0002.tif", b""),
                           ["{exp}/raw_data/tile0001/round0002.tif: empty file (0 bytes)"],
                           targets=(INGEST_T1R2,), log="logs/ingest/tile0001.log",
                           not_complete=("qi2labdatastore/polyDT/tile0001/round0002.zarr",)),
    "tiff-truncated": Row("fresh", lambda e: os.truncate(e / "raw_data/tile0001/round0002.tif", 20000),
                          ["{exp}/raw_data/tile0001/round0002.tif: truncated or damaged: 20000 bytes"],
                          targets=(INGEST_T1R2,), log="logs/ingest/tile0001.log",
                          not_complete=("qi2labdatastore/polyDT/tile0001/round0002.zarr",)),
    "dark-frame-nan": Row("fresh", rewrite_tiff("raw_data/camera_dark_frame.tif",
                                                lambda d: np.where(np.arange(d.size).reshape(d.shape) == 7, np.nan,
                                                                   d.astype(np.float32)).astype(np.float32)),
                          ["{exp}/raw_data/camera_dark_frame.tif: contains NaN or infinite values"],
                          targets=(CALIBRATIONS,), log="logs/init/init.log",
                          not_complete=("qi2labdatastore/calibrations.zarr",)),
    # codebook -------------------------------------------------------------------------------------------------
    "codebook-gene-with-tab": Row("fresh", edit_line("raw_data/codebook.csv", 3, None),
                                  ["{exp}/raw_data/codebook.csv: line 3: gene_id", "contains a tab, newline or other "
                                   "control character"]),
    "codebook-codeword-twice": Row("fresh", edit_line("raw_data/codebook.csv", 3, None),
                                   ["{exp}/raw_data/codebook.csv: line 3: gene_id", "has the same codeword as",
                                    "(line 2)"]),
    "codebook-bit-column-twice": Row("fresh", edit("raw_data/codebook.csv", "bit02", "bit01"),
                                     ["{exp}/raw_data/codebook.csv: column 'bit01' appears 2 times in the header"]),
    "codebook-not-binary": Row("fresh", edit_line("raw_data/codebook.csv", 2, None),
                               ["{exp}/raw_data/codebook.csv: line 2, column 'bit01': '2'; expected 0 or 1"]),
    "codebook-duplicate-gene": Row("fresh", edit_line("raw_data/codebook.csv", 3, None),
                                   ["{exp}/raw_data/codebook.csv: line 3: gene_id", "duplicates line 2; gene_ids "
                                    "must be unique"]),
    "codebook-missing-bit-column": Row("fresh", None,
                                       ["{exp}/raw_data/codebook.csv: has 7 bit columns", "but exp_order.csv images "
                                        "8 bits; expected the header gene_id,bit01..bit08"]),
    "codebook-empty-codeword": Row("fresh", edit_line("raw_data/codebook.csv", 2, None),
                                   ["{exp}/raw_data/codebook.csv: line 2: codeword of", "has no 1"]),
    # a stage's input altered on disk after it was written ------------------------------------------------------
    "chunk-deleted": Row("complete", delete(f"{BIT003}/registered_decon_data/2.0.0"),
                         ["{exp}/" + f"{BIT003}/registered_decon_data/2.0.0: chunk file missing",
                          "Delete {exp}/" + f"{BIT003}/registered_decon_data/.zattrs and rerun the workflow"],
                         targets=(EXPORT,), log="logs/export/tile0000_readouts_ome.log"),
    "chunk-corrupted": Row("complete", write_bytes(f"{BIT003}/registered_decon_data/2.0.0", b"\x00garbage" * 8),
                           ["{exp}/" + f"{BIT003}/registered_decon_data: unreadable",
                            "Invalid blosc-compressed data", "delete its .zattrs and rerun the workflow"],
                           targets=(EXPORT,), log="logs/export/tile0000_readouts_ome.log"),
    "marker-not-complete": Row("complete", drop_marker_key(f"{BIT003}/registered_decon_data", "complete"),
                               ["{exp}/" + f"{BIT003}/registered_decon_data/.zattrs: not marked complete; "
                                "rerun the job that writes registered_decon_data: delete this file and rerun the workflow"],
                               targets=(EXPORT,), log="logs/export/tile0000_readouts_ome.log"),
    "marker-not-json": Row("complete", write_bytes(f"{BIT003}/registered_decon_data/.zattrs", b'{"complete": tr'),
                           ["{exp}/" + f"{BIT003}/registered_decon_data/.zattrs: not valid JSON", "delete this file and rerun the workflow"],
                           targets=(EXPORT,), log="logs/export/tile0000_readouts_ome.log"),
    "zarray-shape-changed": Row("complete", edit_zarray_shape(f"{BIT003}/registered_decon_data"),
                                ["{exp}/" + f"{BIT003}/registered_decon_data: shape [5, 48, 48] / dtype uint16 "
                                 "differ from the marker's [6, 48, 48] / <u2"],
                                targets=(EXPORT,), log="logs/export/tile0000_readouts_ome.log"),
}


def _codebook_changes():
    def not_binary(e):
        path = e / "raw_data/codebook.csv"
        lines = path.read_text().splitlines()
        cells = lines[1].split(",")
        cells[1] = "2"
        lines[1] = ",".join(cells)
        path.write_text("\n".join(lines) + "\n")

    def duplicate_gene(e):
        path = e / "raw_data/codebook.csv"
        lines = path.read_text().splitlines()
        cells = lines[2].split(",")
        cells[0] = lines[1].split(",")[0]
        lines[2] = ",".join(cells)
        path.write_text("\n".join(lines) + "\n")

    def missing_bit_column(e):
        path = e / "raw_data/codebook.csv"
        lines = [line.split(",")[:-1] for line in path.read_text().splitlines()]
        path.write_text("\n".join(",".join(cells) for cells in lines) + "\n")

    def empty_codeword(e):
        path = e / "raw_data/codebook.csv"
        lines = path.read_text().splitlines()
        cells = lines[1].split(",")
        lines[1] = ",".join([cells[0]] + ["0"] * (len(cells) - 1))
        path.write_text("\n".join(lines) + "\n")

    def gene_with_tab(e):
        path = e / "raw_data/codebook.csv"
        lines = path.read_text().splitlines()
        lines[2] = '"Gene\tX"' + lines[2][lines[2].index(","):]
        path.write_text("\n".join(lines) + "\n")

    def codeword_twice(e):
        path = e / "raw_data/codebook.csv"
        lines = path.read_text().splitlines()
        lines[2] = lines[2].split(",")[0] + lines[1][lines[1].index(","):]
        path.write_text("\n".join(lines) + "\n")

    ROWS["codebook-gene-with-tab"].change = gene_with_tab
    ROWS["codebook-codeword-twice"].change = codeword_twice
    ROWS["codebook-not-binary"].change = not_binary
    ROWS["codebook-duplicate-gene"].change = duplicate_gene
    ROWS["codebook-missing-bit-column"].change = missing_bit_column
    ROWS["codebook-empty-codeword"].change = empty_codeword


_codebook_changes()


def snapshot(experiment_dir: Path) -> dict:
    """``{path: (mtime_ns, bytes)}`` of every file under the experiment except logs/ and datastore.json (the
    summary follows the markers: :func:`assert_summary_is_truthful`)."""
    summary = ExperimentPaths(experiment_dir).datastore_json
    return {str(p.relative_to(experiment_dir)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(experiment_dir.rglob("*"))
            if p.is_file() and p.relative_to(experiment_dir).parts[0] != "logs" and p != summary}


def assert_summary_is_truthful(experiment_dir: Path, simulated: bool) -> None:
    """datastore.json, where there is one, says exactly what the markers say."""
    summary = ExperimentPaths(experiment_dir).datastore_json
    if summary.exists():
        experiment = load_experiment(experiment_dir, check_tiffs=False)
        assert json.loads(summary.read_text())["stages"] == stage_states(experiment, experiment_dir,
                                                                         simulated=simulated)


@pytest.fixture
def fresh(demo_run, tmp_path):
    _, _, clean = demo_run
    workdir = tmp_path / "run"
    shutil.copytree(clean / "raw_data", workdir / "experiment" / "raw_data")
    return workdir, workdir / "experiment"


@pytest.mark.parametrize("name", list(ROWS))
def test_bad_input(name, request):
    row = ROWS[name]
    if row.base == "fresh":
        workdir, experiment_dir = request.getfixturevalue("fresh")
        simulated = False
    else:
        workdir, _, experiment_dir = request.getfixturevalue("demo_copy")
        simulated = True
    config = write_config(workdir / "config.yaml", "experiment", simulated=simulated, **row.config)
    row.change(experiment_dir)
    before = snapshot(experiment_dir)
    datastore_json = ExperimentPaths(experiment_dir).datastore_json
    had_datastore_json = datastore_json.exists()

    result = run_snakemake(workdir, config, *row.targets, check=False)

    assert result.returncode != 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = result.stdout + result.stderr
    if row.log:
        log = (experiment_dir / row.log).read_text()
        assert "Traceback" not in log, log
        assert log.splitlines()[-1].split("] ", 1)[1].startswith("ERROR: "), log
        text += log
    for words in row.words:
        assert words.format(exp="experiment") in text, (words, text[-4000:])
    # Nothing that existed was deleted or changed; nothing the bad input fed is marked complete.
    after = snapshot(experiment_dir)
    assert {k: v for k, v in after.items() if k in before} == before
    assert sorted(set(before) - set(after)) == []
    for folder in row.not_complete:
        assert not datastore.is_complete(experiment_dir / folder), folder
    if not had_datastore_json:
        assert not datastore_json.exists()
    else:
        assert_summary_is_truthful(experiment_dir, simulated)
    if row.base == "fresh" and not row.targets:
        assert not (experiment_dir / "qi2labdatastore").exists(), "a parse-time error must come before any job"
    assert not (experiment_dir / "qi2labdatastore" / "exports" / "tile0000_readouts.ome.tif").exists()


def test_marker_without_complete_is_shown_by_status_and_fixed_by_deleting_it(demo_copy):
    """The honest gap of row ``marker-not-complete``: when the edit keeps the file's mtime (a copy
    with ``cp -p``, a tool that restores it), Snakemake sees an up-to-date file and a plain rerun
    does nothing; ``merfishflow status`` reports the tile incomplete, and deleting the marker makes
    the same command rerun the job that writes it (and what depends on it)."""
    workdir, config, experiment_dir = demo_copy
    marker = experiment_dir / BIT003 / "registered_decon_data" / ".zattrs"
    stat = marker.stat()
    ROWS["marker-not-complete"].change(experiment_dir)
    os.utime(marker, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert planned_jobs(workdir, config) == {}
    status = subprocess.run([sys.executable, "-m", "merfishflow.cli", "status", str(experiment_dir)],
                            capture_output=True, text=True)
    assert status.returncode == 0
    assert "  register_local   incomplete 1/2  missing: tile0000" in status.stdout
    marker.unlink()
    jobs = planned_jobs(workdir, config)
    assert jobs.get("register_local") == 1 and "ingest" not in jobs

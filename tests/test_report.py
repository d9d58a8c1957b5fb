"""The QC report: made by the default target, self-contained, byte-identical, and rendered by a real browser."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from conftest import run_snakemake
from merfishflow.io import datastore
from merfishflow.io.paths import FLOW_FIELD, REGISTERED_DATA, ExperimentPaths
from merfishflow.io.reader import Datastore
from merfishflow.report import data, plots
from merfishflow.report.qc import build_report
from merfishflow.stages.report import write_qc_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_default_target_writes_a_self_contained_report(demo_run):
    _, _, experiment_dir = demo_run
    report = ExperimentPaths(experiment_dir).qc_report
    text = report.read_text(encoding="utf-8")
    for heading in ("Spots per gene and the FDR filter", "Local registration", "Decoded spots on the images",
                    "Tile layout", "Cells", "Provenance"):
        assert f">{heading}</h2>" in text
    # A figure for spots, registration, layout and cells, one per tile on the projections, and the
    # FDR fit when the filter fitted a model (not when no blank was decoded).
    fitted = Datastore(experiment_dir).spot_metadata("filtered")["report"]["model"]["fitted"]
    assert text.count('src="data:image/svg+xml;base64,') == 4 + 2 + int(fitted)
    assert ("The FDR filter fitted no model" in text) != fitted
    lowered = text.lower()
    for external in ("<script", 'src="http', "href=\"http", "<link", "url(http", "@import"):
        assert external not in lowered
    # What the register markers record: the flow decision and the scores (docs/datastore.md).
    assert all(name in text for name in ("field_kept", "flow_decision", "ncc_rigid", "ncc_flow"))


def test_report_is_byte_identical_for_the_same_datastore(demo_run, tmp_path):
    _, _, experiment_dir = demo_run
    made_by_the_run = ExperimentPaths(experiment_dir).qc_report.read_bytes()
    copy = tmp_path / "experiment"
    shutil.copytree(experiment_dir, copy)
    ExperimentPaths(copy).qc_report.unlink()
    write_qc_report(copy, ["tile0000", "tile0001"], progress=lambda message: None)
    assert ExperimentPaths(copy).qc_report.read_bytes() == made_by_the_run


def test_snakemake_report_lists_the_qc_report(demo_copy):
    workdir, config, _ = demo_copy
    run_snakemake(workdir, config, "--report", str(workdir / "snakemake_report.zip"))
    import zipfile

    with zipfile.ZipFile(workdir / "snakemake_report.zip") as archive:
        names = archive.namelist()
    assert any(name.endswith("qc_report.html") for name in names), names


def _screenshot(html_path, png_path, profile_dir):
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile_dir}",
           f"--screenshot={png_path}", "--window-size=1280,2000", html_path.resolve().as_uri()]
    subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


@pytest.mark.skipif(CHROMIUM is None and os.environ.get("MERFISHFLOW_REQUIRE_CHROMIUM") != "1",
                    reason="chromium is not installed (apt-get install chromium; CI installs it and sets MERFISHFLOW_REQUIRE_CHROMIUM=1)")
def test_report_renders_in_headless_chromium(demo_run, tmp_path):
    assert CHROMIUM is not None, "MERFISHFLOW_REQUIRE_CHROMIUM=1 but chromium is not installed"
    from PIL import Image

    _, _, experiment_dir = demo_run
    png = tmp_path / "report.png"
    _screenshot(ExperimentPaths(experiment_dir).qc_report, png, tmp_path / "profile")
    pixels = np.asarray(Image.open(png).convert("RGB"))
    assert pixels.shape[:2] == (2000, 1280)
    # A blank or failed page is one colour; the report has text, tables and coloured plots.
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 200
    assert pixels.std() > 20
    # The plots' colours: gene blue bars and the figures' lines are not grey.
    saturation = pixels.max(axis=2).astype(int) - pixels.min(axis=2)
    assert (saturation > 80).mean() > 0.005


def test_registration_table_shows_recorded_flow_decisions_and_scores(tmp_path):
    paths = ExperimentPaths(tmp_path)
    datastore.create_group(paths.calibrations)
    datastore.write_marker(paths.calibrations, {"exp_order": {"rounds": [[1], [2], [3], [4], [5]]}})
    records = {"round0000": {"shift_zyx_px": [0, 0, 0], "flow_field": None, "ncc_before": 1.0},
               "round0003": {"shift_zyx_px": [0, 0, 0], "flow_field": "x", "ncc_flow": 0.8, "flow_decision": "rejected"},
               "round0004": {"shift_zyx_px": [0, 0, 0], "flow_field": "x", "flow_decision": "accepted unconditionally"},
               "round0001": {"shift_zyx_px": [1.0, -2.0, 0.5], "flow_field": "x", "ncc_after": 0.9,
                             "flow_accepted": False, "flow_score_gain": -0.01},
               "round0002": {"shift_zyx_px": [0.0, 1.5, 0.0], "flow_field": "x", "ncc_after": 0.95}}
    for round_, attrs in records.items():
        datastore.create_group(paths.fiducial_array("tile0000", round_, REGISTERED_DATA))
        datastore.write_marker(paths.fiducial_array("tile0000", round_, REGISTERED_DATA), attrs)
    datastore.create_group(paths.fiducial_array("tile0000", "round0002", FLOW_FIELD))
    datastore.write_marker(paths.fiducial_array("tile0000", "round0002", FLOW_FIELD), {"rms_px": [0.0, 0.3, 0.4]})
    table = data.read_registration(Datastore(tmp_path), ["tile0000"]).set_index("round")
    assert table.loc["round0000", "field_kept"] is None
    assert table.loc["round0001", "field_kept"] is np.False_ or table.loc["round0001", "field_kept"] is False
    assert bool(table.loc["round0002", "field_kept"]) is True
    assert table.loc["round0002", "field_rms_px"] == pytest.approx(0.5)
    assert table.loc["round0001", "flow_score_gain"] == -0.01
    assert table.loc["round0001", "shift_y_px"] == -2.0
    assert not table.loc["round0003", "field_kept"] and table.loc["round0003", "flow_decision"] == "rejected"
    assert table.loc["round0004", "field_kept"]
    svg = plots.registration(table.reset_index())
    assert svg.startswith("<?xml") and svg == plots.registration(table.reset_index())


def test_fdr_fit_figure_is_deterministic_and_dateless():
    rng = np.random.default_rng(0)
    is_blank = rng.random(400) < 0.1
    p_blank = np.where(is_blank, rng.uniform(0.3, 1.0, 400), rng.uniform(0.0, 0.6, 400))
    report = {"cutoff_p_blank": 0.5, "target_fdr": 0.05, "n_kept": 300, "n_gene_codewords": 20,
              "n_blank_codewords": 5}
    svg = plots.fdr_fit(p_blank, is_blank, report)
    assert svg == plots.fdr_fit(p_blank, is_blank, report)
    assert "<dc:date>" not in svg
    model = {"fitted": True, "features": ["distance", "log_magnitude", "log_area"], "mean": [0.5, 0.0, 1.0],
             "scale": [0.2, 0.3, 0.4], "coefficients": [2.0, -1.0, -0.5], "intercept": -1.0}
    spots = pd.DataFrame({"distance": [0.1, 0.9], "magnitude": [2.0, 0.5], "area": [10, 2]})
    p = data.blank_probability(spots, model)
    assert p[0] < p[1]
    assert data.blank_probability(spots, {"fitted": False}) is None


def test_report_of_an_unfinished_datastore_names_what_is_missing(tmp_path):
    from merfishflow.errors import InputError

    with pytest.raises(InputError, match="no qi2labdatastore"):
        build_report(tmp_path, ["tile0000"])
    ExperimentPaths(tmp_path).datastore.mkdir()
    with pytest.raises(InputError, match="all_tiles_filtered.parquet: not written yet"):
        build_report(tmp_path, ["tile0000"])

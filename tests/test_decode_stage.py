"""Decoding, filtering and scoring as pipeline stages: the files users take away."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from merfishflow.io import datastore
from merfishflow.spots.decoding import DecodingParams
from merfishflow.errors import InputError
from merfishflow.evaluation.spots import match_spots
from merfishflow.io.metadata import load_experiment
from merfishflow.io.paths import ExperimentPaths
from merfishflow.io.tables import read_metadata, spot_schema
from merfishflow.stages.decode import run_decode, run_filter

pytestmark = pytest.mark.workflow

STARFISH_COLUMNS = ["target", "radius", "spot_id", "distance", "passes_thresholds", "xc", "yc", "zc"]


def test_tables_open_in_pyarrow_and_duckdb_with_documented_types(demo_run):
    duckdb = pytest.importorskip("duckdb")
    _, _, experiment_dir = demo_run
    paths = ExperimentPaths(experiment_dir)
    experiment = load_experiment(experiment_dir)
    schema = spot_schema(experiment.n_bits)
    for path in [paths.decoded_tile(t) for t in experiment.tiles] + [paths.filtered_spots]:
        table = pq.read_table(path)
        assert table.schema.remove_metadata().equals(schema), path
        n = duckdb.sql(f"SELECT count(*) FROM read_parquet('{path}')").fetchall()[0][0]
        assert n == table.num_rows
    per_gene = duckdb.sql(f"SELECT gene_id, count(*) FROM read_parquet('{paths.filtered_spots}') GROUP BY gene_id")
    assert len(per_gene.fetchall()) > 1


def test_normalization_and_thresholds_are_recorded(demo_run):
    _, _, experiment_dir = demo_run
    paths = ExperimentPaths(experiment_dir)
    experiment = load_experiment(experiment_dir)
    meta = read_metadata(paths.decoded_tile("tile0000"))
    assert meta["normalization"]["bits"] == experiment.bits
    assert len(meta["normalization"]["scale"]) == experiment.n_bits and all(v > 0 for v in meta["normalization"]["scale"])
    assert set(meta["thresholds"]) == {"distance", "magnitude"}
    assert meta["parameters"] == DecodingParams().to_dict()
    report = read_metadata(paths.filtered_spots)["report"]
    assert report["target_fdr"] == 0.05 and report["estimated_fdr"] <= 0.05


def test_filtered_spots_have_global_positions_and_no_overlap_duplicates(demo_run):
    _, _, experiment_dir = demo_run
    paths = ExperimentPaths(experiment_dir)
    experiment = load_experiment(experiment_dir)
    spots = pq.read_table(paths.filtered_spots).to_pandas()
    assert set(spots["tile"]) == {0, 1}
    voxel = np.array(experiment.voxel_size_zyx_um)
    for t, tile in enumerate(experiment.tiles):
        origin = np.array(datastore.read_marker(paths.global_registration(tile))["origin_zyx_um"])
        rows = spots[spots["tile"] == t]
        expected = origin + rows[["z_px", "y_px", "x_px"]].to_numpy() * voxel
        assert np.allclose(rows[["global_z_um", "global_y_um", "global_x_um"]].to_numpy(), expected)
    truth = pq.read_table(experiment_dir / "ground_truth" / "spots.parquet").to_pandas()
    in_both = truth.groupby("spot_id")["tile"].nunique()
    assert (in_both > 1).sum() > 0, "the test experiment should put molecules in the tile overlap"
    matched = match_spots(spots, truth, voxel, radius_um=0.5)
    assert not pd.Series(matched[matched >= 0]).duplicated().any()


def test_starfish_csv_reads_back(demo_run):
    _, _, experiment_dir = demo_run
    paths = ExperimentPaths(experiment_dir)
    csv = pd.read_csv(paths.filtered_spots_csv)
    assert list(csv.columns) == STARFISH_COLUMNS
    spots = pq.read_table(paths.filtered_spots).to_pandas()
    assert len(csv) == len(spots) and (csv["target"] == spots["gene_id"]).all()
    assert np.allclose(csv["xc"], spots["global_x_um"], rtol=1e-5)
    assert (csv["passes_thresholds"] == ~spots["is_blank"]).all()


def test_evaluation_is_written(demo_run):
    _, _, experiment_dir = demo_run
    scores = json.loads(ExperimentPaths(experiment_dir).evaluation_json.read_text())
    overall = scores["overall"]
    assert 0 <= overall["f1"] <= 1 and overall["n_molecules"] > 0
    truth = pq.read_table(experiment_dir / "ground_truth" / "spots.parquet").to_pandas()
    assert set(scores["per_gene"]) >= set(truth["gene_id"])


def test_codebook_bits_must_match_the_registered_readouts(demo_copy):
    _, _, experiment_dir = demo_copy
    paths = ExperimentPaths(experiment_dir)
    attrs = datastore.read_marker(paths.calibrations)
    attrs["exp_codebook"]["codewords"] = [w + [0] for w in attrs["exp_codebook"]["codewords"]]
    datastore.write_marker(paths.calibrations, attrs)
    with pytest.raises(InputError, match="codebook has 9 bits but 8 bits are imaged"):
        run_decode(experiment_dir, "tile0000", progress=lambda m: None)


def test_a_tile_without_spots_gives_valid_empty_outputs(demo_copy):
    _, _, experiment_dir = demo_copy
    paths = ExperimentPaths(experiment_dir)
    experiment = load_experiment(experiment_dir)
    for bit in experiment.bits:  # blank every readout of tile 1
        array = paths.readout_array("tile0001", bit, "registered_decon_data")
        attrs = datastore.read_marker(array)
        data = np.zeros(attrs["shape"], np.uint16)
        datastore.write_marked_array(array, data, {k: v for k, v in attrs.items() if k not in ("shape", "dtype")})
    out = run_decode(experiment_dir, "tile0001", progress=lambda m: None)
    table = pq.read_table(out)
    assert table.num_rows == 0 and table.schema.remove_metadata().equals(spot_schema(experiment.n_bits))
    final, report = run_filter(experiment_dir, experiment.tiles, progress=lambda m: None)
    assert set(final["tile"]) <= {0} and report["n_input"] > 0


def test_only_blanks_gives_valid_empty_outputs(demo_copy):
    _, _, experiment_dir = demo_copy
    paths = ExperimentPaths(experiment_dir)
    experiment = load_experiment(experiment_dir)
    for tile in experiment.tiles:
        path = paths.decoded_tile(tile)
        table = pq.read_table(path)
        frame = table.to_pandas()
        frame["is_blank"] = True
        pq.write_table(pa.Table.from_pandas(frame, schema=table.schema, preserve_index=False), path)
    final, report = run_filter(experiment_dir, experiment.tiles, progress=lambda m: None)
    assert len(final) == 0 and report["n_kept"] == 0
    assert pq.read_table(paths.filtered_spots).num_rows == 0
    assert list(pd.read_csv(paths.filtered_spots_csv).columns) == STARFISH_COLUMNS


def test_a_codebook_without_blanks_keeps_every_spot_and_says_why(demo_copy, monkeypatch):
    """No blank codewords: the FDR cannot be estimated; every spot is kept and the log line says so."""
    _, _, experiment_dir = demo_copy
    experiment = load_experiment(experiment_dir)
    monkeypatch.setattr("merfishflow.stages.decode.BLANK_PREFIX", "no-gene-has-this-prefix")
    lines = []
    final, report = run_filter(experiment_dir, experiment.tiles, progress=lines.append)
    assert report["estimated_fdr"] is None and report["n_kept"] == report["n_input"]
    assert any("n/a: no blank codewords" in line for line in lines)

"""Spot matching and scoring on hand-made tables with a known answer."""

from __future__ import annotations

import pandas as pd
import pytest

from merfishflow.errors import InputError
from merfishflow.evaluation.spots import match_spots, score_spots

VOXEL = (0.3, 0.1, 0.1)


def truth_table():
    return pd.DataFrame({
        "spot_id": [0, 1, 2, 2, 3],
        "tile": [0, 0, 0, 1, 1],
        "gene_id": ["A", "A", "B", "B", "A"],
        "z_px": [1.0, 1.0, 2.0, 2.0, 3.0],
        "y_px": [10.0, 20.0, 30.0, 30.0, 5.0],
        "x_px": [10.0, 20.0, 30.0, 2.0, 5.0],
    })


def test_one_to_one_matching_by_gene_tile_and_distance():
    decoded = pd.DataFrame({
        "tile": [0, 0, 0, 0, 1, 1],
        "gene_id": ["A", "A", "A", "B", "B", "A"],
        "z_px": [1.0, 1.0, 1.0, 2.0, 2.0, 3.0],
        "y_px": [10.5, 10.0, 20.0, 30.0, 30.0, 40.0],
        "x_px": [10.0, 10.0, 26.0, 30.0, 2.0, 5.0],
    })
    matched = match_spots(decoded, truth_table(), VOXEL, radius_um=0.5)
    # Row 1 is closer to molecule 0 than row 0; row 2 is 0.6 um from molecule 1; rows 3 and 4 are the
    # same molecule seen in two tiles; row 5 is 3.5 um away from molecule 3.
    assert matched.tolist() == [-1, 0, -1, 2, 2, -1]
    scores = score_spots(decoded, truth_table(), VOXEL, radius_um=0.5)
    overall = scores["overall"]
    assert (overall["true_positives"], overall["false_positives"], overall["false_negatives"]) == (2, 4, 2)
    assert overall["precision"] == pytest.approx(2 / 6) and overall["recall"] == pytest.approx(2 / 4)
    assert scores["per_gene"]["B"]["true_positives"] == 1 and scores["per_gene"]["B"]["false_positives"] == 1


def test_perfect_and_empty_decodings():
    truth = truth_table()
    perfect = truth.drop_duplicates("spot_id").drop(columns="spot_id")
    assert score_spots(perfect, truth, VOXEL)["overall"]["f1"] == 1.0
    empty = perfect.iloc[:0]
    result = score_spots(empty, truth, VOXEL)["overall"]
    assert result["recall"] == 0.0 and result["f1"] == 0.0 and result["n_decoded"] == 0


def test_missing_columns_are_named():
    with pytest.raises(InputError, match="decoded spots: missing columns \\['z_px'\\]"):
        match_spots(pd.DataFrame({"tile": [0], "gene_id": ["A"], "y_px": [0.0], "x_px": [0.0]}), truth_table(), VOXEL)


def test_molecules_outside_the_stack_are_neither_true_nor_false_positives():
    # Molecule 4 lies just outside tile 0's stack and in no other stack; molecule 2 is outside tile 1's
    # stack but inside tile 0's, so it is a real, imaged molecule wherever it is matched.
    truth = pd.concat([truth_table(), pd.DataFrame({
        "spot_id": [4], "tile": [0], "gene_id": ["B"], "z_px": [-0.8], "y_px": [5.0], "x_px": [5.0]})],
        ignore_index=True)
    truth["in_stack"] = [True, True, True, False, True, False]
    decoded = pd.DataFrame({
        "tile": [0, 0, 1, 0],
        "gene_id": ["A", "B", "B", "A"],
        "z_px": [1.0, -0.4, 2.0, -0.4],
        "y_px": [10.0, 5.0, 30.0, 5.0],
        "x_px": [10.0, 5.0, 2.0, 5.0],
    })
    scores = score_spots(decoded, truth, VOXEL, radius_um=0.5)
    overall, strict = scores["overall"], scores["overall_strict"]
    # Row 1 (on molecule 4) is ignored; row 2 matches molecule 2's out-of-stack row in tile 1: a true
    # positive, since molecule 2 is imaged in tile 0; row 3 has no molecule of its gene nearby.
    assert (overall["true_positives"], overall["false_positives"], overall["false_negatives"]) == (2, 1, 2)
    assert overall["n_ignored"] == 1 and overall["n_molecules"] == 4 and overall["n_decoded"] == 4
    assert overall["precision"] == pytest.approx(2 / 3) and overall["recall"] == pytest.approx(2 / 4)
    assert (strict["true_positives"], strict["false_positives"], strict["false_negatives"]) == (2, 2, 2)
    assert scores["per_gene"]["B"] == {**scores["per_gene"]["B"], "true_positives": 1, "false_positives": 0,
                                       "false_negatives": 0}


def test_without_in_stack_both_definitions_agree():
    decoded = truth_table().drop_duplicates("spot_id").drop(columns="spot_id").iloc[:3]
    scores = score_spots(decoded, truth_table(), VOXEL)
    assert scores["overall_strict"] == {k: scores["overall"][k] for k in scores["overall_strict"]}

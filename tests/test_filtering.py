"""Blank-based FDR control and overlap duplicate removal on spot tables with known truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from merfishflow.errors import InputError
from merfishflow.spots.filtering import fdr_filter, remove_overlap_duplicates, starfish_table

N_GENES, N_BLANKS = 20, 5


def mixed_spots(seed=0, n_true=3000, n_false=1000):
    """True spots are close to their codeword and bright; false ones spread over all codewords."""
    rng = np.random.default_rng(seed)
    true = pd.DataFrame({
        "distance": rng.uniform(0.0, 0.35, n_true),
        "magnitude": rng.lognormal(1.0, 0.4, n_true),
        "area": rng.integers(4, 30, n_true),
        "barcode": rng.integers(0, N_GENES, n_true),
        "real": True,
    })
    false = pd.DataFrame({
        "distance": rng.uniform(0.2, 0.52, n_false),
        "magnitude": rng.lognormal(0.2, 0.4, n_false),
        "area": rng.integers(1, 10, n_false),
        "barcode": rng.integers(0, N_GENES + N_BLANKS, n_false),
        "real": False,
    })
    spots = pd.concat([true, false], ignore_index=True)
    spots["is_blank"] = spots["barcode"] >= N_GENES
    return spots


@pytest.mark.parametrize("target", [0.05, 0.01])
def test_fdr_filter_meets_the_target(target):
    spots = mixed_spots()
    keep, report = fdr_filter(spots, N_GENES, N_BLANKS, target)
    kept = spots[keep]
    genes = kept[~kept["is_blank"]]
    assert report["estimated_fdr"] <= target
    assert report["n_kept"] == keep.sum() and report["model"]["fitted"]
    # The estimate tracks the truth: false gene spots among the kept gene spots.
    true_fdr = float((~genes["real"]).mean())
    assert true_fdr <= 2 * target + 0.01, true_fdr
    # And it removes most of what is false while keeping most of what is real.
    assert (~kept["real"]).sum() < 0.5 * (~spots["real"]).sum()
    assert kept["real"].sum() > 0.8 * spots["real"].sum()


def test_fdr_edge_cases():
    spots = mixed_spots(n_true=50, n_false=0)
    spots["is_blank"] = False
    keep, report = fdr_filter(spots, N_GENES, N_BLANKS, 0.05)
    assert keep.all() and report["model"]["fitted"] is False
    only_blanks = spots.assign(is_blank=True)
    keep, report = fdr_filter(only_blanks, N_GENES, N_BLANKS, 0.05)
    assert not keep.any()
    empty = spots.iloc[:0]
    keep, report = fdr_filter(empty, N_GENES, N_BLANKS, 0.05)
    assert keep.shape == (0,) and report["n_kept"] == 0
    keep, report = fdr_filter(spots, N_GENES, 0, 0.05)
    assert keep.all() and "no blank codewords" in report["model"]["reason"]
    with pytest.raises(InputError, match="target_fdr=1.5"):
        fdr_filter(spots, N_GENES, N_BLANKS, 1.5)


def test_duplicates_in_tile_overlaps_are_removed_once():
    spots = pd.DataFrame({
        "tile": [0, 1, 0, 1, 0, 0, 1, 1],
        "gene_id": ["A", "A", "A", "B", "C", "C", "D", "D"],
        "global_z_um": [1.0, 1.1, 5.0, 5.0, 9.0, 9.1, 2.0, 2.0],
        "global_y_um": [10.0, 10.2, 10.0, 10.0, 3.0, 3.0, 7.0, 7.3],
        "global_x_um": [20.0, 19.9, 20.0, 20.0, 3.0, 3.0, 8.0, 8.0],
        "distance": [0.3, 0.1, 0.2, 0.2, 0.1, 0.1, 0.2, 0.2],
        "magnitude": [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 1.0],
    })
    keep = remove_overlap_duplicates(spots, radius_um=0.75)
    # Row 0/1: the same A molecule seen by tiles 0 and 1 -> keep row 1 (smaller distance).
    # Row 2 (A) and row 3 (B) share a place but not a gene; rows 4/5 and rows 6/7 are pairs of
    # close spots from one tile (two molecules), so all are kept.
    assert keep.tolist() == [False, True, True, True, True, True, True, True]
    spots.loc[6, "tile"] = 0
    keep = remove_overlap_duplicates(spots, radius_um=0.75)
    # Rows 6/7 now come from tiles 0 and 1: one molecule, the larger magnitude wins.
    assert keep.tolist() == [False, True, True, True, True, True, True, False]


def test_starfish_columns():
    spots = pd.DataFrame({"gene_id": ["A"], "area": [10], "distance": [0.2], "global_x_um": [1.0],
                          "global_y_um": [2.0], "global_z_um": [3.0]})
    table = starfish_table(spots, (0.3, 0.1, 0.1))
    assert list(table.columns) == ["target", "radius", "spot_id", "distance", "passes_thresholds", "xc", "yc", "zc"]
    assert table["radius"].iloc[0] == pytest.approx((3 * 10 * 0.003 / (4 * np.pi)) ** (1 / 3))

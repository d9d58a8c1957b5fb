"""Experiment-level cleanup of decoded spots: blank-based false-discovery control, overlap duplicates.

False discoveries. Blank codewords are never expressed, so every decoded
blank is an error, and errors land on blank and gene codewords alike: with
``G`` gene and ``K`` blank codewords, ``n_blank * G / K`` estimates the false
spots among the gene spots. A logistic regression on spot features
(distance to the codeword, log magnitude, log area) learns how blank-like
each spot is; spots are kept most gene-like first, as many as keep the
estimated false-discovery rate at or under the target (MERlin's adaptive
filter does the same with a histogram in place of the regression).

Overlap duplicates. A molecule in a tile overlap is decoded in both tiles.
Spots of the same gene from different tiles closer than a radius (global µm)
are one molecule: the better spot (smaller distance, then larger magnitude,
then lower tile) is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import InputError

FEATURES = ("distance", "log_magnitude", "log_area")


@dataclass(frozen=True)
class FilterParams:
    """Config key ``filtering`` (config/README.md)."""

    target_fdr: float = 0.05
    overlap_radius_um: float = 0.75

    def to_dict(self) -> dict:
        return {"target_fdr": self.target_fdr, "overlap_radius_um": self.overlap_radius_um}


def _features(spots: pd.DataFrame) -> np.ndarray:
    return np.column_stack([
        spots["distance"].to_numpy(np.float64),
        np.log10(np.maximum(spots["magnitude"].to_numpy(np.float64), 1e-12)),
        np.log10(np.maximum(spots["area"].to_numpy(np.float64), 1.0)),
    ])


def blank_probability(spots: pd.DataFrame):
    """Logistic-regression probability that each spot is a blank, and the fitted model.

    Returns
    -------
    p_blank : ndarray of float64
    model : dict
        ``features``, standardisation ``mean``/``scale``, ``coefficients``,
        ``intercept`` (plain JSON); ``{"fitted": False, ...}`` when the
        spots are all blank or all genes (then the distance alone orders them).
    """
    from sklearn.linear_model import LogisticRegression

    x = _features(spots)
    y = spots["is_blank"].to_numpy(bool)
    if len(spots) == 0 or y.all() or not y.any():
        # Nothing to learn from: order by distance (0 = best) scaled to [0, 1).
        order = spots["distance"].to_numpy(np.float64) if len(spots) else np.zeros(0)
        return order / (1.0 + order), {"fitted": False, "features": list(FEATURES),
                                         "reason": "no blanks" if not y.any() else "only blanks"}
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale == 0] = 1.0
    z = (x - mean) / scale
    # Balanced classes: blanks are rare, and the ordering, not the calibration, matters here.
    model = LogisticRegression(class_weight="balanced", max_iter=1000, solver="lbfgs").fit(z, y)
    p = model.predict_proba(z)[:, 1]
    return p, {"fitted": True, "features": list(FEATURES), "mean": mean.tolist(), "scale": scale.tolist(),
               "coefficients": model.coef_[0].tolist(), "intercept": float(model.intercept_[0])}


def fdr_filter(spots: pd.DataFrame, n_gene_codewords: int, n_blank_codewords: int, target_fdr: float):
    """Keep the most gene-like spots whose estimated false-discovery rate is <= ``target_fdr``.

    Parameters
    ----------
    spots : DataFrame
        Columns ``distance``, ``magnitude``, ``area``, ``is_blank``.
    n_gene_codewords, n_blank_codewords : int
        Codewords of each kind in the codebook.
    target_fdr : float

    Returns
    -------
    keep : ndarray of bool
    report : dict
        The model, the probability cutoff, counts and the estimated FDR of the kept set.
    """
    if not 0 < target_fdr < 1:
        raise InputError(f"filtering.target_fdr={target_fdr}: expected a number in (0, 1)")
    n = len(spots)
    if n_blank_codewords == 0:
        return np.ones(n, bool), {"model": {"fitted": False, "reason": "the codebook has no blank codewords"},
                                  "cutoff": None, "estimated_fdr": None, "n_input": n, "n_kept": n,
                                  "n_blank_kept": 0}
    p, model = blank_probability(spots)
    is_blank = spots["is_blank"].to_numpy(bool)
    order = np.lexsort((np.arange(n), p))  # most gene-like first, ties by row
    blanks = np.cumsum(is_blank[order])
    genes = np.cumsum(~is_blank[order])
    estimated = blanks * (n_gene_codewords / n_blank_codewords) / np.maximum(genes, 1)
    allowed = np.flatnonzero(estimated <= target_fdr)
    n_keep = int(allowed[-1] + 1) if len(allowed) else 0
    # Keep whole ties: never split spots with equal probability.
    if 0 < n_keep < n and p[order[n_keep]] == p[order[n_keep - 1]]:
        n_keep = int(np.searchsorted(p[order], p[order[n_keep - 1]], side="left"))
    keep = np.zeros(n, bool)
    keep[order[:n_keep]] = True
    kept_blanks = int(is_blank[keep].sum())
    kept_genes = int((~is_blank[keep]).sum())
    fdr = kept_blanks * (n_gene_codewords / n_blank_codewords) / kept_genes if kept_genes else 0.0
    return keep, {"model": model, "cutoff_p_blank": float(p[order[n_keep - 1]]) if n_keep else None,
                  "estimated_fdr": float(fdr), "target_fdr": float(target_fdr), "n_input": int(n),
                  "n_kept": int(n_keep), "n_blank_kept": kept_blanks, "n_blank_input": int(is_blank.sum()),
                  "n_gene_codewords": int(n_gene_codewords), "n_blank_codewords": int(n_blank_codewords)}


def remove_overlap_duplicates(spots: pd.DataFrame, radius_um: float) -> np.ndarray:
    """Mask of spots to keep: of same-gene spots from different tiles within ``radius_um``, the best one.

    Parameters
    ----------
    spots : DataFrame
        Columns ``tile``, ``gene_id``, ``global_z_um``, ``global_y_um``,
        ``global_x_um``, ``distance``, ``magnitude``.
    radius_um : float

    Returns
    -------
    ndarray of bool
    """
    from scipy.spatial import cKDTree

    n = len(spots)
    keep = np.ones(n, bool)
    if n == 0 or spots["tile"].nunique() < 2:
        return keep
    # Rank: smaller distance, larger magnitude, lower tile, earlier row.
    rank = np.empty(n, np.int64)
    rank[np.lexsort((np.arange(n), spots["tile"].to_numpy(), -spots["magnitude"].to_numpy(np.float64),
                     spots["distance"].to_numpy(np.float64)))] = np.arange(n)
    xyz = spots[["global_z_um", "global_y_um", "global_x_um"]].to_numpy(np.float64)
    tiles = spots["tile"].to_numpy()
    for _, rows in spots.groupby("gene_id", sort=True).indices.items():
        if len(rows) < 2:
            continue
        pairs = cKDTree(xyz[rows]).query_pairs(radius_um, output_type="ndarray")
        if len(pairs) == 0:
            continue
        a, b = rows[pairs[:, 0]], rows[pairs[:, 1]]
        cross = tiles[a] != tiles[b]
        a, b = a[cross], b[cross]
        # Best spots first: a spot already dropped cannot drop another.
        best_first = np.argsort(np.minimum(rank[a], rank[b]), kind="stable")
        for k in best_first:
            i, j = (a[k], b[k]) if rank[a[k]] < rank[b[k]] else (b[k], a[k])
            if keep[i]:
                keep[j] = False
    return keep


def starfish_table(spots: pd.DataFrame, voxel_size_zyx_um) -> pd.DataFrame:
    """starfish ``DecodedSpots`` columns: target, radius, spot_id, distance, passes_thresholds, xc, yc, zc (µm).

    ``radius`` is that of a sphere with the spot's volume (area in voxels x voxel volume);
    blank barcodes do not pass the thresholds; ``cell_id`` follows when the table has one.
    """
    voxel_volume = float(np.prod(voxel_size_zyx_um))
    out = pd.DataFrame({
        "target": spots["gene_id"].astype(str).to_numpy(),
        "radius": np.cbrt(3 * spots["area"].to_numpy(np.float64) * voxel_volume / (4 * np.pi)),
        "spot_id": spots["spot_id"].to_numpy(np.int64) if "spot_id" in spots else np.arange(len(spots), dtype=np.int64),
        "distance": spots["distance"].to_numpy(np.float64),
        "passes_thresholds": ~spots["is_blank"].to_numpy(bool) if "is_blank" in spots else np.ones(len(spots), bool),
        "xc": spots["global_x_um"].to_numpy(np.float64),
        "yc": spots["global_y_um"].to_numpy(np.float64),
        "zc": spots["global_z_um"].to_numpy(np.float64),
    })
    if "cell_id" in spots.columns:
        out["cell_id"] = spots["cell_id"].to_numpy()
    return out

"""Scoring decoded spots against the simulator's ground truth: precision, recall and F1.

A decoded spot matches a true molecule of the same gene imaged in the same
tile when their positions, in µm of that tile's round-0 frame, are within
``radius_um``; matching is one-to-one, closest pairs first. Position in the
tile frame (not in global coordinates) is used because the absolute position
of a mosaic cannot be measured from images: global registration fixes the
tiles relative to each other, not to the world, and the simulator's truth is
in the world.

A molecule in a tile overlap is one molecule: matched in either tile it is
one true positive; a second decoded spot matched to it (a duplicate the
overlap cleanup missed) is a false positive.

Molecules just outside the imaged stack ("don't care")
------------------------------------------------------
The simulated section is thicker than the stack (and molecules lie beyond
every tile's y/x border), so a real molecule 0.1 voxel outside the stack
looks the same as one 0.1 voxel inside it, and a decoder may report it at
the stack's edge. The truth therefore also lists, with ``in_stack`` False,
the molecules within ``TRUTH_MARGIN_UM`` (1 µm) outside a tile's frame
(``-0.5 <= p < shape - 0.5`` voxels is the frame). As with the ignore regions
of detection benchmarks (COCO ``iscrowd``, KITTI ``DontCare``), a decoded
spot matched to a molecule that is in no tile's stack is neither a true nor
a false positive, and such molecules are not counted as missed: recall is
over the molecules in at least one stack. Everything else is unchanged: a
spot with no molecule of its gene within ``radius_um`` is still a false
positive, and the match radius is the same. ``score_spots`` also reports
the **strict** numbers (``overall_strict``), in which matches to molecules
outside every stack count as false positives, as before ``in_stack``
existed. A truth table without ``in_stack`` is taken as all in the stack
(then both definitions agree).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import InputError

POSITION_COLUMNS = ["z_px", "y_px", "x_px"]


def _require(frame, columns, what):
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(f"{what}: missing columns {missing}; has {list(frame.columns)}")


def match_spots(decoded: pd.DataFrame, truth: pd.DataFrame, voxel_size_zyx_um, radius_um=0.5) -> np.ndarray:
    """The true ``spot_id`` each decoded spot matches, or -1.

    Parameters
    ----------
    decoded : DataFrame
        Columns ``tile`` (int), ``gene_id``, ``z_px``, ``y_px``, ``x_px``.
    truth : DataFrame
        The simulator's ``ground_truth/spots.parquet``: ``spot_id``, ``tile``,
        ``gene_id``, ``z_px``, ``y_px``, ``x_px`` (one row per molecule and tile).
    voxel_size_zyx_um : sequence of 3 float
    radius_um : float
        Largest distance of a match.

    Returns
    -------
    ndarray of int64, one per decoded row (in order)
    """
    from scipy.spatial import cKDTree

    _require(decoded, ["tile", "gene_id", *POSITION_COLUMNS], "decoded spots")
    _require(truth, ["spot_id", "tile", "gene_id", *POSITION_COLUMNS], "ground truth spots")
    voxel = np.asarray(voxel_size_zyx_um, dtype=np.float64)
    matched = np.full(len(decoded), -1, dtype=np.int64)
    decoded_index = decoded.reset_index(drop=True)
    truth_groups = {key: frame for key, frame in truth.groupby(["tile", "gene_id"], sort=True)}
    for key, frame in decoded_index.groupby(["tile", "gene_id"], sort=True):
        candidates = truth_groups.get(key)
        if candidates is None:
            continue
        a = frame[POSITION_COLUMNS].to_numpy(np.float64) * voxel
        b = candidates[POSITION_COLUMNS].to_numpy(np.float64) * voxel
        pairs = cKDTree(a).sparse_distance_matrix(cKDTree(b), radius_um, output_type="ndarray")
        if len(pairs) == 0:
            continue
        # Closest pairs first, ties broken by index: deterministic one-to-one matching.
        order = np.lexsort((pairs["j"], pairs["i"], pairs["v"]))
        used_a, used_b = set(), set()
        ids = candidates["spot_id"].to_numpy()
        rows = frame.index.to_numpy()
        for k in order:
            i, j = int(pairs["i"][k]), int(pairs["j"][k])
            if i in used_a or j in used_b:
                continue
            used_a.add(i)
            used_b.add(j)
            matched[rows[i]] = ids[j]
    return matched


def _prf(tp, fp, fn):
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"true_positives": int(tp), "false_positives": int(fp), "false_negatives": int(fn),
            "precision": float(precision), "recall": float(recall), "f1": float(f1)}


def score_spots(decoded: pd.DataFrame, truth: pd.DataFrame, voxel_size_zyx_um, radius_um=0.5) -> dict:
    """Precision, recall and F1 overall and per gene (plain JSON-able dict).

    Blank barcodes are never true (the simulator emits none): every decoded
    blank is a false positive.

    Parameters
    ----------
    decoded : DataFrame
        As for :func:`match_spots`.
    truth : DataFrame
        As for :func:`match_spots`, optionally with the boolean ``in_stack``
        (False: the molecule lies just outside that tile's stack).
    voxel_size_zyx_um : sequence of 3 float
    radius_um : float

    Returns
    -------
    dict
        ``overall`` and ``per_gene``: true/false positives, false negatives,
        precision, recall, F1, with matches to molecules outside every stack
        ignored (the module docstring); ``overall`` also has ``n_decoded``,
        ``n_molecules`` (in a stack), ``n_ignored`` (decoded spots matched to
        a molecule outside every stack) and ``radius_um``. ``overall_strict``:
        the same with those matches counted as false positives.
    """
    matched = match_spots(decoded, truth, voxel_size_zyx_um, radius_um)
    first = pd.Series(matched).duplicated(keep="first").to_numpy()
    if "in_stack" in truth.columns:
        imaged_ids = truth.loc[truth["in_stack"].to_numpy(bool), "spot_id"].unique()
    else:
        imaged_ids = truth["spot_id"].unique()
    imaged = np.isin(matched, imaged_ids)
    is_tp = (matched >= 0) & ~first & imaged
    # A first match to a molecule outside every stack: a correct detection of a molecule nobody asked for.
    ignored = (matched >= 0) & ~first & ~imaged
    molecules = truth.drop_duplicates("spot_id")
    molecules = molecules[molecules["spot_id"].isin(imaged_ids)]
    genes = sorted(set(truth["gene_id"]) | set(decoded["gene_id"]))
    per_gene = {}
    decoded_genes = decoded["gene_id"].to_numpy()
    n_true = molecules["gene_id"].value_counts()
    for gene in genes:
        rows = decoded_genes == gene
        tp = int(is_tp[rows].sum())
        fp = int(rows.sum()) - tp - int(ignored[rows].sum())
        fn = int(n_true.get(gene, 0)) - tp
        per_gene[gene] = _prf(tp, fp, fn)
    tp, n_ignored = int(is_tp.sum()), int(ignored.sum())
    overall = _prf(tp, len(decoded) - tp - n_ignored, len(molecules) - tp)
    overall.update({"n_decoded": int(len(decoded)), "n_molecules": int(len(molecules)), "n_ignored": n_ignored,
                    "radius_um": float(radius_um)})
    strict = _prf(tp, len(decoded) - tp, len(molecules) - tp)
    return {"overall": overall, "overall_strict": strict, "per_gene": per_gene}

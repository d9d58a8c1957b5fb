"""Scoring cell masks against the simulator's true cells (docs/masks.md, "Accuracy").

The same definitions for one tile (:func:`mean_iou`) and for a mosaic whose
cells are merged across tile overlaps (:func:`mosaic_mean_iou`), and the
share of correctly decoded spots that land in the cell matched to their true
cell (:func:`assignment_accuracy`).
"""

from __future__ import annotations

import numpy as np

from ..cells.segmentation import _voxel_size
from ..errors import InputError
from ..io.masks import count_label_pairs

__all__ = ["assignment_accuracy", "mean_iou", "mosaic_mean_iou", "mosaic_overlaps"]


def mean_iou(predicted, truth, *, min_voxels=1):
    """Mean over the true cells of the IoU with their best-matching predicted cell.

    Definition: for every true cell ``t`` (label > 0 in ``truth``) with at least
    ``min_voxels`` voxels *in the volume* (cells cut by the volume's edges are
    judged on their visible part only), find the predicted cell ``p`` (label > 0
    in ``predicted``) that shares the most voxels with it (ties: the smaller id)
    and compute ``|t ∩ p| / |t ∪ p|``; 0 if no predicted cell overlaps it.
    The result is the unweighted mean of these values (each true cell counts
    once, whatever its size). Predicted cells matching no true cell (false
    positives) do not lower it; merged cells do (the merged cell's union is
    large), and so do split ones (only the best piece counts).

    Parameters
    ----------
    predicted, truth : ndarray of int, same shape
    min_voxels : int
        True cells with fewer visible voxels are left out (1 = all).

    Returns
    -------
    float
        NaN when no true cell qualifies.
    """
    predicted = np.asarray(predicted)
    truth = np.asarray(truth)
    if predicted.shape != truth.shape:
        raise InputError(f"mean_iou: predicted and truth shapes differ: {predicted.shape} vs {truth.shape}")
    t_ids, t_sizes = np.unique(truth[truth > 0], return_counts=True)
    p_ids, p_sizes = np.unique(predicted[predicted > 0], return_counts=True)
    both = (truth > 0) & (predicted > 0)
    pairs, counts = count_label_pairs(truth[both], predicted[both])
    truth_sizes = {t: n for t, n in zip(t_ids.tolist(), t_sizes.tolist()) if n >= min_voxels}
    return _mean_best_iou(dict(zip(map(tuple, pairs.T.tolist()), counts.tolist())), truth_sizes,
                          dict(zip(p_ids.tolist(), p_sizes.tolist())))


def _best_matches(pair_counts):
    """True id -> (shared voxels, predicted id) of its most-overlapping predicted cell (ties: smaller id)."""
    best = {}
    for (t, p), c in sorted(pair_counts.items()):
        if t not in best or c > best[t][0]:
            best[t] = (c, p)
    return best


def _mean_best_iou(pair_counts, truth_sizes, predicted_sizes):
    """Unweighted mean over the true cells of ``truth_sizes`` of the IoU with their best match; NaN if none."""
    best = _best_matches(pair_counts)
    values = []
    for t, size in sorted(truth_sizes.items()):
        if t in best:
            c, p = best[t]
            values.append(c / (size + predicted_sizes[p] - c))
        else:
            values.append(0.0)
    return float(np.mean(values)) if values else float("nan")


def mosaic_overlaps(predicted_tiles, truth_tiles, origins_um, voxel_size_zyx_um):
    """Voxel counts of every (true, predicted) cell pair over a mosaic, each voxel counted once.

    Tiles overlap, so every voxel of the mosaic is counted in one tile only:
    the tile whose centre (in y and x) is nearest to it.

    Parameters
    ----------
    predicted_tiles, truth_tiles : list of ndarray of int, shape (z, y, x)
        Per tile, labels in *global* ids (0 = background): predicted cells
        already merged across tiles, true cells by their global id.
    origins_um : array-like, shape (n_tiles, 3)
        Global position of each tile's voxel (0, 0, 0), µm.
    voxel_size_zyx_um : 3 floats

    Returns
    -------
    pair_counts : dict
        ``{(true id, predicted id): shared voxels}`` (both > 0).
    truth_sizes, predicted_sizes : dict
        ``{id: voxels}``.
    """
    origins = np.asarray(origins_um, dtype=np.float64).reshape(-1, 3)
    voxel = _voxel_size(voxel_size_zyx_um)
    if not (len(predicted_tiles) == len(truth_tiles) == len(origins)):
        raise InputError("mosaic scoring: need one predicted and one true label volume per tile origin")
    centres = np.array([o[1:] + (np.asarray(t.shape[1:]) - 1) / 2.0 * voxel[1:]
                        for o, t in zip(origins, truth_tiles)])
    pair_counts, truth_sizes, predicted_sizes = {}, {}, {}

    def add(counter, keys, counts):
        for k, c in zip(keys, counts):
            counter[k] = counter.get(k, 0) + int(c)

    for k, (pred, truth) in enumerate(zip(predicted_tiles, truth_tiles)):
        if pred.shape != truth.shape:
            raise InputError(f"mosaic scoring: tile {k}: predicted and truth shapes differ: "
                             f"{pred.shape} vs {truth.shape}")
        ny, nx = truth.shape[1:]
        yy = origins[k, 1] + np.arange(ny)[:, None] * voxel[1]
        xx = origins[k, 2] + np.arange(nx)[None, :] * voxel[2]
        d2 = (yy[None] - centres[:, 0, None, None]) ** 2 + (xx[None] - centres[:, 1, None, None]) ** 2
        owned = np.broadcast_to(np.argmin(d2, axis=0) == k, truth.shape)
        t_vals, p_vals = truth[owned].astype(np.int64), pred[owned].astype(np.int64)
        add(truth_sizes, *np.unique(t_vals[t_vals > 0], return_counts=True))
        add(predicted_sizes, *np.unique(p_vals[p_vals > 0], return_counts=True))
        both = (t_vals > 0) & (p_vals > 0)
        if both.any():
            pairs, counts = count_label_pairs(t_vals[both], p_vals[both])
            add(pair_counts, map(tuple, pairs.T.tolist()), counts)
    return pair_counts, truth_sizes, predicted_sizes


def mosaic_mean_iou(predicted_tiles, truth_tiles, origins_um, voxel_size_zyx_um, *, min_volume_um3=0.0):
    """:func:`mean_iou` over a whole mosaic: each cell judged once, across tile overlaps.

    Voxels are pooled over the tiles as in :func:`mosaic_overlaps`; the score
    is then defined as in :func:`mean_iou` with global ids: a cell that spans
    tiles is one cell, and only cells cut by the outer edge of the mosaic are
    judged on a visible part. Parameters as in :func:`mosaic_overlaps`;
    ``min_volume_um3`` leaves out true cells with less visible volume (µm³;
    0 = all), such as the slivers of cells that barely reach into the
    imaged volume.

    Returns
    -------
    float
        NaN when no true cell is visible.
    """
    pair_counts, truth_sizes, predicted_sizes = mosaic_overlaps(predicted_tiles, truth_tiles, origins_um,
                                                                voxel_size_zyx_um)
    min_voxels = float(min_volume_um3) / float(np.prod(_voxel_size(voxel_size_zyx_um)))
    truth_sizes = {t: n for t, n in truth_sizes.items() if n >= min_voxels}
    return _mean_best_iou(pair_counts, truth_sizes, predicted_sizes)


def assignment_accuracy(true_cell, assigned_cell, pair_counts):
    """Fraction of spots given the right cell, and how the others went wrong.

    The right cell for a spot of true cell ``t`` is the predicted cell that
    shares the most voxels with ``t`` (the match :func:`mosaic_mean_iou`
    scores); for a spot outside every true cell it is 0. A piece of an
    over-split cell is therefore a wrong cell.

    Parameters
    ----------
    true_cell, assigned_cell : array-like of int
        Per spot: its true cell (0 = none) and the cell the pipeline gave it.
    pair_counts : dict
        From :func:`mosaic_overlaps`.

    Returns
    -------
    dict
        ``accuracy`` and the counts ``right_cell``, ``right_outside``,
        ``wrong_cell``, ``missed_cell`` (true cell, given 0),
        ``false_cell`` (outside, given a cell), ``n``.
    """
    true_cell = np.asarray(true_cell, dtype=np.int64)
    assigned_cell = np.asarray(assigned_cell, dtype=np.int64)
    best = _best_matches(pair_counts)
    right = np.array([best.get(int(t), (0, -1))[1] for t in true_cell], dtype=np.int64)
    inside = true_cell > 0
    counts = {"right_cell": int((inside & (assigned_cell == right)).sum()),
              "right_outside": int((~inside & (assigned_cell == 0)).sum()),
              "wrong_cell": int((inside & (assigned_cell > 0) & (assigned_cell != right)).sum()),
              "missed_cell": int((inside & (assigned_cell == 0)).sum()),
              "false_cell": int((~inside & (assigned_cell > 0)).sum()),
              "n": int(len(true_cell))}
    counts["accuracy"] = (counts["right_cell"] + counts["right_outside"]) / counts["n"] if counts["n"] else float("nan")
    return counts

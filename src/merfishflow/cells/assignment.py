"""Cells across tiles, spots to cells, and the cell x gene count matrix.

Each tile is segmented on its own, so a cell that spans a tile overlap is
found twice. Two instances from neighbouring tiles are the same cell when,
in the overlap (tiles placed by global registration), they share at least
``min_shared_fraction`` of the smaller instance's voxels there; such
instances are merged (union-find) into one global cell. Global cell ids are
1..N in the order of each cell's first instance (tile, then local label).

A spot belongs to the cell whose mask contains it in the spot's own tile
(after overlap cleanup each spot has exactly one tile); 0 = no cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import InputError
from ..io.masks import count_label_pairs
from ..image.stitching import overlap_slices, union_find


@dataclass(frozen=True)
class GlobalCells:
    """Global cells and how tile instances map to them.

    Attributes
    ----------
    instance_to_cell : dict
        ``{(tile index, local label): global cell id}``.
    table : DataFrame
        One row per global cell: ``cell_id`` (int32), ``centroid_z_um``,
        ``centroid_y_um``, ``centroid_x_um`` (global µm, volume-weighted over
        its instances), ``volume_um3``, ``n_instances``, ``tiles`` (str,
        ';'-separated tile indices), ``instance_tile`` and ``instance_label``
        (int32 arrays: the tile index and local mask label of each instance,
        sorted; the persisted form of ``instance_to_cell``).
    """

    instance_to_cell: dict
    table: pd.DataFrame

    def global_labels(self, tile, labels):
        """Tile ``tile``'s label volume (or any array of its local labels) in global cell ids (0 stays 0)."""
        labels = np.asarray(labels)
        lut = np.zeros(int(labels.max(initial=0)) + 1, np.int64)
        for (t, local), cell in self.instance_to_cell.items():
            if t == tile and local < len(lut):
                lut[local] = cell
        return lut[labels]


def shared_instances(labels_i, labels_j, origin_i_um, origin_j_um, voxel_size_zyx_um, min_shared_fraction=0.5):
    """Pairs (label in i, label in j) that are one cell, from the overlap of two tiles.

    Returns
    -------
    list of (int, int, int)
        ``(label_i, label_j, shared voxels)``.
    """
    found = overlap_slices(origin_i_um, origin_j_um, labels_i.shape, voxel_size_zyx_um)
    if found is None:
        return []
    a, b = labels_i[found[0]].ravel(), labels_j[found[1]].ravel()
    both = (a > 0) & (b > 0)
    if not both.any():
        return []
    pairs, shared = count_label_pairs(a[both], b[both])
    size_a = dict(zip(*np.unique(a[a > 0], return_counts=True)))
    size_b = dict(zip(*np.unique(b[b > 0], return_counts=True)))
    # Mutual best partners only: an instance is one cell in each tile, so a
    # fragment cannot chain two different cells of the other tile together.
    best_a, best_b = {}, {}
    for (la, lb), n in zip(pairs.T, shared):
        if n > best_a.get(la, (0, 0))[0]:
            best_a[la] = (n, lb)
        if n > best_b.get(lb, (0, 0))[0]:
            best_b[lb] = (n, la)
    out = []
    for (la, lb), n in zip(pairs.T, shared):
        mutual = best_a[la][1] == lb and best_b[lb][1] == la
        if mutual and n >= min_shared_fraction * min(size_a[la], size_b[lb]):
            out.append((int(la), int(lb), int(n)))
    return out


def merge_cells(mask_sets, load_labels, min_shared_fraction=0.5, progress=None) -> GlobalCells:
    """Merge the cell instances of all tiles into global cells.

    Parameters
    ----------
    mask_sets : list of merfishflow.io.masks.MaskSet
        One per tile, in tile order (origin and voxel size inside).
    load_labels : callable(int) -> ndarray
        Label volume of tile t (e.g. ``mask_sets[t].to_labels``), loaded on
        demand so two tiles are in memory at a time.
    min_shared_fraction : float

    Returns
    -------
    GlobalCells
    """
    instances = [(t, c.cell_id) for t, ms in enumerate(mask_sets) for c in ms.cells]
    index = {key: k for k, key in enumerate(instances)}
    find, union = union_find(len(instances))
    shared_voxels = {}
    for i in range(len(mask_sets)):
        labels_i = None
        for j in range(i + 1, len(mask_sets)):
            mi, mj = mask_sets[i], mask_sets[j]
            if overlap_slices(mi.origin_zyx_um, mj.origin_zyx_um, mi.shape_zyx, mi.voxel_size_zyx_um) is None:
                continue
            labels_i = load_labels(i) if labels_i is None else labels_i
            pairs = shared_instances(labels_i, load_labels(j), mi.origin_zyx_um, mj.origin_zyx_um,
                                     mi.voxel_size_zyx_um, min_shared_fraction)
            for la, lb, n in pairs:
                union(index[(i, la)], index[(j, lb)])
                shared_voxels[(i, la)] = shared_voxels.get((i, la), 0) + n
            if progress is not None:
                progress(f"tile{i:04d}-tile{j:04d}: {len(pairs)} cells span the overlap")
    roots = sorted({find(k) for k in range(len(instances))})
    cell_of_root = {root: n + 1 for n, root in enumerate(roots)}
    mapping = {key: cell_of_root[find(k)] for key, k in index.items()}
    rows = {}
    for (t, label), cell in mapping.items():
        ms = mask_sets[t]
        c = ms.cell(label)
        volume = c.volume_voxels * float(np.prod(ms.voxel_size_zyx_um))
        row = rows.setdefault(cell, {"weight": 0.0, "centroid": np.zeros(3), "volume": 0.0, "tiles": []})
        row["weight"] += c.volume_voxels
        row["centroid"] += c.volume_voxels * np.asarray(c.centroid_zyx_um, float)
        row["volume"] += volume
        row["tiles"].append(t)
    # Voxels two merged instances share in an overlap are counted once.
    for (t, label), n in shared_voxels.items():
        ms = mask_sets[t]
        rows[mapping[(t, label)]]["volume"] -= n * float(np.prod(ms.voxel_size_zyx_um))
    cells = sorted(rows)
    table = pd.DataFrame({
        "cell_id": np.array(cells, np.int32),
        "centroid_z_um": [rows[c]["centroid"][0] / rows[c]["weight"] for c in cells],
        "centroid_y_um": [rows[c]["centroid"][1] / rows[c]["weight"] for c in cells],
        "centroid_x_um": [rows[c]["centroid"][2] / rows[c]["weight"] for c in cells],
        "volume_um3": [rows[c]["volume"] for c in cells],
        "n_instances": np.array([len(rows[c]["tiles"]) for c in cells], np.int32),
        "tiles": [";".join(str(t) for t in sorted(set(rows[c]["tiles"]))) for c in cells],
    })
    # The (tile, local label) -> cell_id mapping itself, so readers never recompute the merge.
    members = {}
    for (t, label), cell in sorted(mapping.items()):
        members.setdefault(cell, []).append((t, label))
    table["instance_tile"] = [np.array([t for t, _ in members[c]], np.int32) for c in cells]
    table["instance_label"] = [np.array([lab for _, lab in members[c]], np.int32) for c in cells]
    return GlobalCells(mapping, table)


def _nearby_offsets(radius_um, voxel_size_zyx_um):
    """Voxel offsets within ``radius_um`` (ellipsoid in voxels), nearest first (ties in raster order)."""
    voxel = np.asarray(voxel_size_zyx_um, dtype=np.float64)
    half = np.floor(radius_um / voxel).astype(int)
    grid = np.stack(np.meshgrid(*[np.arange(-h, h + 1) for h in half], indexing="ij"), axis=-1).reshape(-1, 3)
    distance = np.sqrt(((grid * voxel) ** 2).sum(axis=1))
    keep = distance <= radius_um
    grid, distance = grid[keep], distance[keep]
    order = np.lexsort((grid[:, 2], grid[:, 1], grid[:, 0], distance))
    return grid[order]


def assign_spots(spots: pd.DataFrame, load_labels, cells: GlobalCells, expand_um=0.0, voxel_size_zyx_um=None,
                 chunk=100_000) -> np.ndarray:
    """Global cell id of every spot (0 = outside every cell), from its own tile's mask.

    A spot in no cell's mask but within ``expand_um`` of one goes to the
    nearest such cell (ties: the first offset in raster order): the stained
    cytoplasm at a cell's rim is dim, so the mask ends a little inside the
    cell, and molecules there would otherwise be lost (docs/masks.md,
    "Accuracy"). ``expand_um = 0`` uses the masks as they are.

    Parameters
    ----------
    spots : DataFrame
        Columns ``tile`` (int), ``z_px``, ``y_px``, ``x_px``.
    load_labels : callable(int) -> ndarray
    cells : GlobalCells
    expand_um : float
        Largest distance, µm, from a spot outside every mask to the cell it is given.
    voxel_size_zyx_um : 3 floats
        Needed when ``expand_um > 0``.
    chunk : int
        Spots looked at together when expanding (bounds the memory: chunk x offsets).
    """
    if not np.isfinite(expand_um) or expand_um < 0:
        raise InputError(f"assignment.expand_um: expected a distance in µm >= 0, got {expand_um!r}")
    if expand_um > 0 and voxel_size_zyx_um is None:
        raise InputError("assign_spots: expand_um > 0 needs voxel_size_zyx_um")
    out = np.zeros(len(spots), np.int32)
    tiles = spots["tile"].to_numpy()
    offsets = _nearby_offsets(expand_um, voxel_size_zyx_um) if expand_um > 0 else None
    for t in np.unique(tiles):
        rows = np.flatnonzero(tiles == t)
        labels = load_labels(int(t))
        upper = np.asarray(labels.shape) - 1
        index = np.rint(spots.iloc[rows][["z_px", "y_px", "x_px"]].to_numpy(np.float64)).astype(np.int64)
        index = np.clip(index, 0, upper)
        local = labels[index[:, 0], index[:, 1], index[:, 2]].astype(np.int64)
        if offsets is not None:
            outside = np.flatnonzero(local == 0)
            for start in range(0, len(outside), chunk):
                part = outside[start:start + chunk]
                near = np.clip(index[part, None, :] + offsets[None, :, :], 0, upper)
                found = labels[near[..., 0], near[..., 1], near[..., 2]]
                first = np.argmax(found > 0, axis=1)
                local[part] = found[np.arange(len(part)), first]
        out[rows] = cells.global_labels(int(t), local)
    return out


def count_matrix(spots: pd.DataFrame, cell_ids, genes):
    """Cells x genes counts (scipy CSR, int32) from spots with ``cell_id`` > 0 and a gene in ``genes``."""
    from scipy.sparse import coo_matrix

    gene_index = {g: k for k, g in enumerate(genes)}
    cell_index = {int(c): k for k, c in enumerate(cell_ids)}
    keep = (spots["cell_id"].to_numpy() > 0) & spots["gene_id"].isin(gene_index).to_numpy()
    rows = [cell_index[int(c)] for c in spots["cell_id"].to_numpy()[keep]]
    cols = [gene_index[g] for g in spots["gene_id"].to_numpy()[keep]]
    data = np.ones(len(rows), np.int32)
    matrix = coo_matrix((data, (rows, cols)), shape=(len(cell_ids), len(genes)), dtype=np.int32).tocsr()
    matrix.sum_duplicates()
    return matrix

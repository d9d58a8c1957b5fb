"""The segment and assign stages: cell masks per tile, then spots to cells and cell x gene counts.

segment (per tile): :func:`merfishflow.segmentation.segment_cells` on the
tile's registered round-0 fiducial, written as a versioned mask file
(``segmentation/<tile>_cells.mfmask``, docs/masks.md) placed by the tile's
global registration.

assign (experiment): cells merged across tile overlaps
(:mod:`merfishflow.assignment`), every filtered spot given a ``cell_id``, and
the counts written as 10x-style Matrix Market files and an AnnData ``.h5ad``.
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .. import datastore
from ..assignment import assign_spots, count_matrix, merge_cells
from ..fileio import atomic
from ..filtering import starfish_table
from ..masks import read_masks, write_masks
from ..naming import round_name
from ..paths import REGISTERED_DATA, ExperimentPaths
from ..segmentation import SegmentationParams, segment_cells
from .decode import BLANK_PREFIX, read_metadata, spot_schema, write_spot_table


def segment_tile_stage(experiment_dir, tile, params=SegmentationParams(), progress=print) -> Path:
    """Segment one tile's registered round-0 fiducial into ``segmentation/<tile>_cells.mfmask``."""
    paths = ExperimentPaths(experiment_dir)
    source = paths.fiducial_array(tile, round_name(0), REGISTERED_DATA)
    image = datastore.read_marked_array(source).astype(np.float32)
    placement = datastore.read_marker(paths.global_registration(tile))
    voxel = placement["spacing_zyx_um"]
    labels = segment_cells(image, voxel, params, progress=progress)
    metadata = {"stage": "segment", "software": datastore.software_versions(), "parameters": params.to_dict(),
                "inputs_sha256": {"fiducial": datastore.marker_digest(source),
                                  "placement": datastore.marker_digest(paths.global_registration(tile))}}
    out = paths.cell_masks(tile)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_masks(out, labels, voxel, placement["origin_zyx_um"], tile=tile, metadata=metadata)
    progress(f"{tile}: {int(labels.max())} cells -> {out.name}")
    return out


def _gzip_text(path: Path, text: str) -> Path:
    # mtime=0 and no file name in the header: the same text gives the same bytes.
    def write(temp):
        with open(temp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as f:
            f.write(text.encode("utf-8"))
    return atomic(path, write)


def _matrix_market(matrix) -> str:
    """Matrix Market coordinate format of a genes x cells matrix (10x orientation), 1-based."""
    coo = matrix.tocoo()
    order = np.lexsort((coo.row, coo.col))
    lines = ["%%MatrixMarket matrix coordinate integer general",
             f"{matrix.shape[0]} {matrix.shape[1]} {coo.nnz}"]
    lines += [f"{r + 1} {c + 1} {v}" for r, c, v in zip(coo.row[order], coo.col[order], coo.data[order])]
    return "\n".join(lines) + "\n"


def write_counts(counts_dir: Path, matrix, cell_names, genes, cell_table: pd.DataFrame) -> dict:
    """10x-style ``matrix.mtx.gz``/``barcodes.tsv.gz``/``features.tsv.gz`` and ``cell_by_gene.h5ad``."""
    import anndata as ad

    counts_dir.mkdir(parents=True, exist_ok=True)
    out = {
        "matrix": _gzip_text(counts_dir / "matrix.mtx.gz", _matrix_market(matrix.T.tocsr())),
        "barcodes": _gzip_text(counts_dir / "barcodes.tsv.gz", "".join(f"{c}\n" for c in cell_names)),
        "features": _gzip_text(counts_dir / "features.tsv.gz",
                               "".join(f"{g}\t{g}\tGene Expression\n" for g in genes)),
    }
    obs = cell_table.drop(columns=["cell_id"]).copy()
    obs.index = pd.Index(cell_names, name="cell")
    adata = ad.AnnData(X=matrix.astype(np.int32), obs=obs, var=pd.DataFrame(index=pd.Index(genes, name="gene")))
    adata.obsm["spatial"] = cell_table[["centroid_x_um", "centroid_y_um", "centroid_z_um"]].to_numpy(np.float64)
    adata.uns["spatial_axes"] = ["x_um", "y_um", "z_um"]
    out["h5ad"] = atomic(counts_dir / "cell_by_gene.h5ad", lambda p: adata.write_h5ad(p))
    return out


def assign_experiment(experiment_dir, tiles, min_shared_fraction=0.5, progress=print) -> dict:
    """Merge cells across tiles, give every filtered spot its cell, and count."""
    paths = ExperimentPaths(experiment_dir)
    calibration = datastore.read_marker(paths.calibrations)
    mask_sets = [read_masks(paths.cell_masks(t)) for t in tiles]
    cache = {}

    def load_labels(t):
        # The two most recent tiles stay in memory (pairs are visited tile by tile).
        if t not in cache:
            if len(cache) >= 2:
                cache.pop(next(iter(cache)))
            cache[t] = mask_sets[t].to_labels()
        return cache[t]

    cells = merge_cells(mask_sets, load_labels, min_shared_fraction, progress=progress)
    spots = pq.read_table(paths.filtered_spots).to_pandas()
    spots["cell_id"] = assign_spots(spots, load_labels, cells)
    genes = [g for g in calibration["exp_codebook"]["gene_id"] if not g.startswith(BLANK_PREFIX)]
    cell_ids = cells.table["cell_id"].to_numpy()
    cell_names = [f"cell{c:07d}" for c in cell_ids]
    matrix = count_matrix(spots, cell_ids, genes)
    inside = int((spots["cell_id"] > 0).sum())
    progress(f"{len(cell_ids)} cells ({int((cells.table['n_instances'] > 1).sum())} span a tile overlap), "
             f"{inside} of {len(spots)} spots inside a cell, {int(matrix.sum())} counted")
    digests = [datastore.file_digest(paths.cell_masks(t)) for t in tiles] + [datastore.file_digest(paths.filtered_spots)]
    metadata = {"stage": "assign", "software": datastore.software_versions(),
                "parameters": {"min_shared_fraction": min_shared_fraction},
                "inputs_sha256": hashlib.sha256("".join(digests).encode()).hexdigest(),
                "filter": read_metadata(paths.filtered_spots).get("report")}
    n_bits = len(calibration["exp_codebook"]["bits"])
    schema = spot_schema(n_bits).append(pa.field("cell_id", pa.int32()))
    write_spot_table(paths.assigned_spots, spots, schema, metadata)
    csv = starfish_table(spots, calibration["voxel_size_zyx_um"])
    atomic(paths.assigned_spots_csv, lambda p: csv.to_csv(p, index=False, float_format="%.6g", lineterminator="\n"))
    table_path = paths.cells_table
    cell_table = pa.Table.from_pandas(cells.table, preserve_index=False)
    atomic(table_path, lambda p: pq.write_table(cell_table, p, compression="zstd"))
    write_counts(paths.counts, matrix, cell_names, genes, cells.table)
    return {"n_cells": len(cell_ids), "n_spots_in_cells": inside}

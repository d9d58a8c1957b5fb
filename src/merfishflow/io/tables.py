"""Tables the pipeline writes: spot tables (Parquet with a provenance record), CSV copies, cell x gene counts.

Spot tables (docs/outputs.md) carry one schema (:func:`spot_schema`) from
decode to assign, and the stage's provenance record in their Parquet
metadata under :data:`METADATA_KEY`. Counts are written 10x-style (Matrix
Market and two TSVs, gzip without time stamps) and as AnnData ``.h5ad``.
Every file is written atomically (:func:`merfishflow.io.fileio.atomic`).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputError
from .fileio import atomic, canonical_json
from .naming import bit_name

METADATA_KEY = b"merfishflow"
# Codebook rows whose gene_id starts with this are blanks (no gene): the FDR filter's negative controls.
BLANK_PREFIX = "Blank-"


SPOT_ID_TILE_STRIDE = 1_000_000_000


def spot_schema(n_bits: int) -> pa.Schema:
    """Column types of the per-tile and all-tile spot tables (docs/outputs.md)."""
    fields = [
        ("tile", pa.int32()), ("spot_id", pa.int64()), ("gene_id", pa.string()), ("barcode_id", pa.int32()),
        ("z_px", pa.float64()), ("y_px", pa.float64()), ("x_px", pa.float64()),
        ("global_z_um", pa.float64()), ("global_y_um", pa.float64()), ("global_x_um", pa.float64()),
        ("distance", pa.float32()), ("magnitude", pa.float32()), ("area", pa.int32()),
        ("is_blank", pa.bool_()),
    ]
    fields += [(f"intensity_{bit_name(b)}", pa.float32()) for b in range(1, n_bits + 1)]
    return pa.schema(fields)


def spot_ids(tile_index: int, n_spots: int) -> np.ndarray:
    """Experiment-wide spot ids, kept by every later table: ``tile * SPOT_ID_TILE_STRIDE + row in the tile's
    decoded table`` (tile 3's spot 42 is 3000000042)."""
    return np.int64(tile_index) * SPOT_ID_TILE_STRIDE + np.arange(n_spots, dtype=np.int64)


def write_spot_table(path: Path, frame: pd.DataFrame, schema: pa.Schema, metadata: dict) -> Path:
    """``frame``'s ``schema`` columns as zstd Parquet, ``metadata`` (the stage's record) under :data:`METADATA_KEY`."""
    table = pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)
    table = table.replace_schema_metadata({METADATA_KEY: canonical_json(metadata).encode()})
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic(path, lambda p: pq.write_table(table, p, compression="zstd"))


def read_metadata(path) -> dict:
    """What a stage recorded in a spot table's Parquet metadata."""
    meta = pq.read_schema(path).metadata or {}
    if METADATA_KEY not in meta:
        raise InputError(f"{path}: not a merfishflow spot table (no {METADATA_KEY.decode()!r} metadata)")
    return json.loads(meta[METADATA_KEY])


def write_table_csv(path: Path, frame: pd.DataFrame) -> Path:
    """``frame`` as CSV: no index, floats to 6 significant digits, ``\\n`` line ends (the same on every OS)."""
    return atomic(path, lambda p: frame.to_csv(p, index=False, float_format="%.6g", lineterminator="\n"))


def write_table_parquet(path: Path, frame: pd.DataFrame) -> Path:
    """``frame`` as zstd Parquet, without its index."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    return atomic(path, lambda p: pq.write_table(table, p, compression="zstd"))


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


def write_counts(files: dict, matrix, cell_names, genes, cell_table: pd.DataFrame, *, n_blank_spots=None,
                 provenance=None) -> dict:
    """10x-style ``matrix``/``barcodes``/``features`` and the AnnData ``cell_by_gene``.

    The h5ad's ``obs`` holds the integer ``cell_id``, the cell table's scalar columns and
    ``n_blank_spots`` (blank-barcode spots inside each cell: the per-cell false-positive check);
    ``uns["merfishflow"]`` the stage's ``provenance`` (parameters, software, input digests).

    Parameters
    ----------
    files : dict
        ``{key: path}`` (:meth:`merfishflow.io.paths.ExperimentPaths.counts_files`).
    matrix : scipy.sparse matrix, cells x genes
    cell_names, genes : list of str
    cell_table : DataFrame
        One row per cell (``cell_id``, centroids in µm, ...): the AnnData ``obs``.
    n_blank_spots : array of int, optional
    provenance : dict, optional
    """
    import anndata as ad

    for path in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    out = {
        "matrix": _gzip_text(files["matrix"], _matrix_market(matrix.T.tocsr())),
        "barcodes": _gzip_text(files["barcodes"], "".join(f"{c}\n" for c in cell_names)),
        "features": _gzip_text(files["features"], "".join(f"{g}\t{g}\tGene Expression\n" for g in genes)),
    }
    # List columns (the instance mapping) stay in cells.parquet: h5ad obs holds scalars only.
    obs = cell_table[[c for c in cell_table.columns if cell_table[c].dtype != object or c == "tiles"]].copy()
    obs["cell_id"] = obs["cell_id"].astype(np.int32)
    if n_blank_spots is not None:
        obs["n_blank_spots"] = np.asarray(n_blank_spots, np.int32)
    obs.index = pd.Index(cell_names, name="cell")
    adata = ad.AnnData(X=matrix.astype(np.int32), obs=obs, var=pd.DataFrame(index=pd.Index(genes, name="gene")))
    adata.obsm["spatial"] = cell_table[["centroid_x_um", "centroid_y_um", "centroid_z_um"]].to_numpy(np.float64)
    adata.uns["spatial_axes"] = ["x_um", "y_um", "z_um"]
    if provenance is not None:
        adata.uns["merfishflow"] = json.dumps(provenance, sort_keys=True)
    out["h5ad"] = atomic(files["cell_by_gene"], lambda p: adata.write_h5ad(p))
    return out

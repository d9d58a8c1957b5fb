"""The QC report's figures, as SVG text that is byte-identical for the same data.

Figures are built with :class:`matplotlib.figure.Figure` (no pyplot, no GUI
backend). Determinism: text is drawn as paths in matplotlib's bundled DejaVu
Sans (no font lookup on the reader's machine), the SVG ids are salted with a
fixed string instead of a random one, and the ``Date`` metadata is dropped.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

GENE_COLOUR = "#3b6ea8"
BLANK_COLOUR = "#d1495b"
KEPT_COLOUR = "#2e8b57"
STYLE = {
    "svg.hashsalt": "merfishflow-qc-report",
    "svg.fonttype": "path",
    "svg.image_inline": True,
    "font.family": "DejaVu Sans",
    "font.size": 9.0,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "image.interpolation": "nearest",
}


def new_figure(width_in: float, height_in: float, ncols: int = 1, nrows: int = 1):
    """A figure and its axes (always a flat array), under the report's style."""
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(width_in, height_in), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    return fig, axes


def to_svg(fig) -> str:
    """The figure as standalone SVG text without a date or random ids."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context(STYLE):
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    return buffer.getvalue()


def spots_per_gene(decoded: pd.DataFrame, filtered: pd.DataFrame, gene_ids) -> str:
    """Spots per codeword before and after the filter, most frequent first; blanks in red."""
    before = decoded["gene_id"].value_counts().reindex(gene_ids, fill_value=0)
    after = filtered["gene_id"].value_counts().reindex(gene_ids, fill_value=0)
    order = sorted(gene_ids, key=lambda g: (-before[g], g))
    blank = np.array([g.startswith("Blank-") for g in order])
    x = np.arange(len(order))
    fig, (ax,) = new_figure(max(6.0, 0.14 * len(order) + 1.5), 3.2)
    colours = np.where(blank, BLANK_COLOUR, GENE_COLOUR)
    ax.bar(x, before[order].to_numpy() + 0.5, color=colours, alpha=0.35, width=0.85, label="decoded")
    ax.bar(x, after[order].to_numpy() + 0.5, color=colours, width=0.5, label="after FDR filter")
    ax.set_yscale("log")
    ax.set_ylabel("spots (+0.5, log scale)")
    ax.set_xticks(x, order, rotation=90, fontsize=5 if len(order) > 40 else 7)
    ax.set_xlim(-0.7, len(order) - 0.3)
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=GENE_COLOUR, alpha=0.35, label="gene, decoded"),
                       Patch(color=GENE_COLOUR, label="gene, after filter"),
                       Patch(color=BLANK_COLOUR, alpha=0.35, label="blank, decoded"),
                       Patch(color=BLANK_COLOUR, label="blank, after filter")], fontsize=7, ncols=2, frameon=False)
    return to_svg(fig)


def fdr_fit(p_blank: np.ndarray, is_blank: np.ndarray, report: dict) -> str:
    """The filter's blank probability for gene and blank spots, and the estimated FDR against spots kept."""
    fig, (left, right) = new_figure(9.0, 3.2, ncols=2)
    bins = np.linspace(0.0, 1.0, 41)
    left.hist(p_blank[~is_blank], bins=bins, color=GENE_COLOUR, alpha=0.7, label=f"gene spots ({(~is_blank).sum()})")
    left.hist(p_blank[is_blank], bins=bins, color=BLANK_COLOUR, alpha=0.7, label=f"blank spots ({is_blank.sum()})")
    cutoff = report.get("cutoff_p_blank")
    if cutoff is not None:
        left.axvline(cutoff, color="black", lw=1, ls="--", label=f"cutoff {cutoff:.3f}")
    left.set_xlabel("p(blank) from the filter's logistic model")
    left.set_ylabel("spots")
    left.set_yscale("log")
    left.legend(fontsize=7, frameon=False)
    order = np.lexsort((np.arange(len(p_blank)), p_blank))
    blanks = np.cumsum(is_blank[order])
    genes = np.cumsum(~is_blank[order])
    ratio = report.get("n_gene_codewords", 1) / max(report.get("n_blank_codewords", 1), 1)
    estimated = blanks * ratio / np.maximum(genes, 1)
    right.plot(np.arange(1, len(order) + 1), estimated, color="black", lw=1)
    target = report.get("target_fdr")
    if target is not None:
        right.axhline(target, color=BLANK_COLOUR, lw=1, ls="--", label=f"target FDR {target:g}")
    if report.get("n_kept"):
        right.axvline(report["n_kept"], color=KEPT_COLOUR, lw=1, label=f"kept {report['n_kept']}")
    right.set_xlabel("spots kept, most gene-like first")
    right.set_ylabel("estimated FDR (blanks x genes/blanks codewords)")
    right.set_ylim(0, max(0.2, 2 * (target or 0.1)))
    right.legend(fontsize=7, frameon=False)
    return to_svg(fig)


def registration(table: pd.DataFrame) -> str:
    """Per tile: the rigid shift of every round (px) and its correlation scores; open markers: field rejected."""
    from matplotlib.ticker import MaxNLocator

    tiles = list(dict.fromkeys(table["tile"]))
    ncols = min(len(tiles), 3)
    nrows = 2 * int(np.ceil(len(tiles) / ncols))
    fig, axes = new_figure(3.2 * ncols, 2.0 * nrows, ncols=ncols, nrows=nrows)
    scores = [c for c in table.columns if c.startswith("ncc_") or c.endswith("_score")]
    for k, tile in enumerate(tiles):
        rows = table[table["tile"] == tile]
        rounds = np.array([int(r[len("round"):]) for r in rows["round"]])
        top = axes[(k // ncols) * 2 * ncols + k % ncols]
        bottom = axes[(k // ncols) * 2 * ncols + ncols + k % ncols]
        for axis, colour in zip("zyx", ("#7a5195", "#ef5675", "#ffa600")):
            top.plot(rounds, rows[f"shift_{axis}_px"], marker="o", ms=3, color=colour, label=axis)
        top.set_title(tile, fontsize=9)
        top.set_ylabel("rigid shift (px)")
        top.legend(fontsize=6, frameon=False, ncols=3)
        kept = rows["field_kept"].map(lambda v: v is None or bool(v)).to_numpy(bool)
        for name in scores:
            values = pd.to_numeric(rows[name], errors="coerce").to_numpy(np.float64)
            line, = bottom.plot(rounds, values, lw=1, label=name)
            bottom.scatter(rounds[kept], values[kept], s=14, color=line.get_color())
            bottom.scatter(rounds[~kept], values[~kept], s=14, facecolors="none", edgecolors=line.get_color())
        bottom.set_xlabel("round")
        for ax in (top, bottom):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        bottom.set_ylabel("score")
        if scores:
            bottom.legend(fontsize=6, frameon=False)
    for ax in axes[len(tiles) * 2:]:
        ax.set_visible(False)
    return to_svg(fig)


def spots_on_projection(projection: np.ndarray, spots: pd.DataFrame, tile: str, gene_ids) -> str:
    """A tile's z maximum projection with its filtered spots on top, coloured by gene (blanks as crosses)."""
    import matplotlib

    fig, (ax,) = new_figure(4.6, 4.6 * projection.shape[0] / projection.shape[1] + 0.4)
    low, high = np.percentile(projection, [1.0, 99.8]) if projection.size else (0.0, 1.0)
    ax.imshow(projection, cmap="gray", vmin=low, vmax=max(high, low + 1e-6))
    palette = matplotlib.colormaps["tab20"]
    genes = [g for g in gene_ids if not g.startswith("Blank-")]
    colour_of = {g: palette(i % 20) for i, g in enumerate(genes)}
    blank = spots["is_blank"].to_numpy(bool)
    ax.scatter(spots["x_px"][~blank], spots["y_px"][~blank], s=9, facecolors="none", linewidths=0.8,
               edgecolors=[colour_of.get(g, "white") for g in spots["gene_id"][~blank]])
    ax.scatter(spots["x_px"][blank], spots["y_px"][blank], s=12, marker="x", linewidths=0.8, color=BLANK_COLOUR)
    ax.set_title(f"{tile}: {int((~blank).sum())} gene spots, {int(blank.sum())} blank (x)", fontsize=9)
    ax.set_xlabel("x (px)")
    ax.set_ylabel("y (px)")
    return to_svg(fig)


def tile_layout(placements: pd.DataFrame, spots: pd.DataFrame) -> str:
    """Tiles at their registered global positions (solid) and stage positions (dashed), spots as dots."""
    from matplotlib.patches import Rectangle

    width = float((placements["origin_x_um"] + placements["extent_x_um"]).max() - placements["origin_x_um"].min())
    height = float((placements["origin_y_um"] + placements["extent_y_um"]).max() - placements["origin_y_um"].min())
    scale = 6.0 / max(width, height, 1e-6)
    fig, (ax,) = new_figure(max(3.0, width * scale + 1.0), max(2.5, height * scale + 0.8))
    ax.scatter(spots["global_x_um"], spots["global_y_um"], s=1, color="#999999", linewidths=0)
    for row in placements.itertuples():
        ax.add_patch(Rectangle((row.stage_x_um, row.stage_y_um), row.extent_x_um, row.extent_y_um, fill=False,
                               ls="--", lw=0.8, edgecolor="#888888"))
        ax.add_patch(Rectangle((row.origin_x_um, row.origin_y_um), row.extent_x_um, row.extent_y_um, fill=False,
                               lw=1.2, edgecolor=GENE_COLOUR))
        ax.text(row.origin_x_um + row.extent_x_um / 2, row.origin_y_um + row.extent_y_um / 2, row.tile,
                ha="center", va="center", fontsize=8, color=GENE_COLOUR)
    ax.set_aspect("equal")
    ax.invert_yaxis()
    ax.autoscale_view()
    ax.set_xlabel("global x (µm)")
    ax.set_ylabel("global y (µm)")
    return to_svg(fig)


def cell_summary(cells: pd.DataFrame, counts_per_cell: np.ndarray) -> str:
    """Histograms of cell volume and of spots counted per cell."""
    fig, (left, right) = new_figure(9.0, 3.0, ncols=2)
    volumes = cells["volume_um3"].to_numpy(np.float64)
    left.hist(volumes, bins=min(40, max(5, len(volumes) // 2)), color=GENE_COLOUR)
    left.set_xlabel("cell volume (µm³)")
    left.set_ylabel("cells")
    right.hist(counts_per_cell, bins=min(40, max(5, len(counts_per_cell) // 2)), color=KEPT_COLOUR)
    right.set_xlabel("gene spots counted per cell")
    right.set_ylabel("cells")
    return to_svg(fig)

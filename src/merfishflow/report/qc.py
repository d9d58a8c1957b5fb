"""The QC report of one experiment: what each stage did, as figures and tables in one HTML page.

Sections: spots per gene against blanks and the FDR filter's fit; local
registration per tile and round (rigid shift, scores, whether the
deformation field was kept); decoded spots over each tile's projection; the
tile layout at the registered global positions; cell sizes and counts per
cell; provenance (software and parameters each stage recorded). Only what the datastore
records is shown, and nothing time- or host-dependent, so the same datastore
gives the same bytes (the run records with time and host stay in
``logs/provenance/``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..io.reader import Datastore
from html import escape

from . import data, document, plots


def spot_section(ds, tiles) -> str:
    decoded = data.read_decoded_spots(ds, tiles)
    filtered, report = data.read_filtered_spots(ds)
    genes = data.gene_ids(ds)
    is_blank = decoded["is_blank"].to_numpy(bool)
    n_blank_codes = sum(g.startswith(data.BLANK_PREFIX) for g in genes)
    summary = [("decoded spots (all tiles)", len(decoded)), ("of which blank", int(is_blank.sum())),
               ("codewords: genes / blanks", f"{len(genes) - n_blank_codes} / {n_blank_codes}"),
               ("kept by the FDR filter", report.get("n_kept")),
               ("estimated FDR of the kept spots", report.get("estimated_fdr")),
               ("target FDR", report.get("target_fdr")),
               ("overlap duplicates removed", report.get("n_overlap_duplicates")),
               ("final spots (blank)", f"{len(filtered)} ({int(filtered['is_blank'].sum())})")]
    body = [document.key_values(summary),
            document.figure(plots.spots_per_gene(decoded, filtered, genes), "spots per gene")]
    p_blank = data.blank_probability(decoded, report.get("model", {}))
    if p_blank is None:
        reason = report.get("model", {}).get("reason", "no model recorded")
        body.append(f'<p class="note">The FDR filter fitted no model ({escape(reason)}).</p>')
    else:
        body.append(document.figure(plots.fdr_fit(p_blank, is_blank, report), "FDR filter fit"))
        model = report["model"]
        body.append('<p class="note">Logistic model of p(blank): ' + ", ".join(
            f"{f} {c:+.3f}" for f, c in zip(model["features"], model["coefficients"]))
            + f", intercept {model['intercept']:+.3f} (standardized features).</p>")
    return "".join(body)


def registration_section(ds, tiles) -> str:
    table = data.read_registration(ds, tiles)
    if table.empty:
        return '<p class="note">No local registration markers.</p>'
    shown = table.copy()
    note = ('<p class="note">Rigid shift of each round onto round 0 (pixels), the registration scores the '
            "markers record, and whether the deformation field (optical flow) was kept; open markers in the "
            "score plot are rounds whose field was not kept. field_rms_px: RMS length of the stored field.</p>")
    return note + document.figure(plots.registration(table), "registration") + document.table(shown, ("tile", "round"))


def projection_section(ds, tiles, spots) -> str:
    parts = []
    genes = data.gene_ids(ds)
    for tile in tiles:
        projection = data.read_projection(ds, tile)
        tile_spots = spots[spots["tile"] == int(tile[len("tile"):])]
        parts.append(document.figure(plots.spots_on_projection(projection, tile_spots, tile, genes),
                                 f"{tile} spots"))
    note = ('<p class="note">Maximum projection along z of the registered round-0 fiducial, with the filtered '
            "spots (circles coloured by gene; blanks as red crosses).</p>")
    return note + "".join(parts)


def layout_section(ds, tiles, spots) -> str:
    placements = data.read_placements(ds, tiles)
    if placements.empty:
        return '<p class="note">No global registration markers.</p>'
    pairs = {}
    for row in placements.itertuples():
        for pair in row.pairs:
            key = tuple(pair["tiles"])
            pairs[key] = {"tiles": " - ".join(key), "score": pair["score"], "used": pair["used"],
                          "offset_y_um": pair["offset_zyx_um"][1], "offset_x_um": pair["offset_zyx_um"][2]}
    columns = ["tile", "origin_z_um", "origin_y_um", "origin_x_um", "stage_y_um", "stage_x_um"]
    residual = placements["residual_rms_um"].iloc[0]
    body = [document.figure(plots.tile_layout(placements, spots), "tile layout"),
            '<p class="note">Solid: registered global positions; dashed: stage positions; grey: spots. '
            f"Residual of the global fit: {document.value_text(residual)} µm RMS.</p>",
            document.table(placements[columns], ("tile",))]
    if pairs:
        body.append(document.table(pd.DataFrame([pairs[k] for k in sorted(pairs)]), ("tiles",)))
    return "".join(body)


def cell_section(ds, spots) -> str:
    cells = data.read_cells(ds)
    if cells.empty or "cell_id" not in spots:
        return '<p class="note">No cells (assignment has not run, or no cell was found).</p>'
    genes = spots[~spots["is_blank"].to_numpy(bool)]
    counted = genes[genes["cell_id"] > 0]["cell_id"].value_counts()
    per_cell = counted.reindex(cells["cell_id"].to_numpy(), fill_value=0).to_numpy()
    summary = [("cells", len(cells)), ("median volume (µm³)", float(np.median(cells["volume_um3"]))),
               ("gene spots in a cell", f"{int(per_cell.sum())} of {len(genes)}"),
               ("median spots per cell", float(np.median(per_cell))),
               ("cells spanning a tile overlap", int((cells.get("n_instances", pd.Series([])) > 1).sum()))]
    return document.key_values(summary) + document.figure(plots.cell_summary(cells, per_cell), "cells")


def provenance_section(ds, tiles) -> str:
    records = data.read_stage_records(ds, tiles)
    software = sorted({(k, v) for r in records for k, v in r["software"].items()})
    body = ["<h3>Software recorded by the stages</h3>",
            document.table(pd.DataFrame(software, columns=["package", "version"]), ("package", "version"))]
    evaluation = data.read_evaluation(ds)
    if evaluation is not None:
        overall = evaluation.get("overall", {})
        body += ["<h3>Against the simulator's truth</h3>",
                 document.key_values([(k, overall.get(k)) for k in ("f1", "precision", "recall", "n_decoded",
                                                              "n_molecules")])]
    body.append("<h3>Parameters recorded by each stage</h3>")
    body += [f"<h4>{r['stage']}</h4>{document.preformatted(r['parameters'])}" for r in records if r["parameters"]]
    body.append('<p class="note">When and where each run happened, its command and the pipeline\'s git commit '
                "are in logs/provenance/run-*.json (left out here so the report depends on the data only).</p>")
    return "".join(body)


def build_report(experiment_dir, tiles=None, progress=None) -> str:
    """The report's HTML text.

    Parameters
    ----------
    experiment_dir : str or Path
        The experiment folder (or its ``qi2labdatastore/``).
    tiles : sequence of str, optional
        The tiles to show (``tile0000`` ...); default: every tile in the datastore.
    progress : callable, optional
    """
    ds = Datastore(experiment_dir)
    tiles = list(ds.tiles if tiles is None else tiles)
    spots, _ = data.read_filtered_spots(ds)
    sections = []
    for anchor, heading, build in (
        ("spots", "Spots per gene and the FDR filter", lambda: spot_section(ds, tiles)),
        ("registration", "Local registration", lambda: registration_section(ds, tiles)),
        ("projections", "Decoded spots on the images", lambda: projection_section(ds, tiles, spots)),
        ("layout", "Tile layout", lambda: layout_section(ds, tiles, spots)),
        ("cells", "Cells", lambda: cell_section(ds, spots)),
        ("provenance", "Provenance", lambda: provenance_section(ds, tiles)),
    ):
        if progress is not None:
            progress(f"report: {heading}")
        sections.append((anchor, heading, build()))
    title = f"merfishflow QC report: {ds.paths.root.name} ({len(tiles)} tiles, {len(ds.rounds)} rounds)"
    return document.page(title, sections)

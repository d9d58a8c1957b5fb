"""The QC report as one self-contained HTML page: figures inline, no scripts, no external files.

Each figure is embedded as a ``data:image/svg+xml;base64`` image, so the
figures' SVG ids cannot clash and the page needs nothing but itself.
"""

from __future__ import annotations

import base64
import html
import json

import numpy as np
import pandas as pd

STYLE = """
body { font-family: "DejaVu Sans", Arial, sans-serif; margin: 24px auto; max-width: 1150px; color: #222;
       background: #fff; line-height: 1.4; }
h1 { border-bottom: 3px solid #3b6ea8; padding-bottom: 6px; }
h2 { margin-top: 36px; border-bottom: 1px solid #ccc; color: #2b4f7a; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #eef3f9; }
td.text, th.text { text-align: left; }
img.figure { max-width: 100%; display: block; margin: 8px 0; }
.note { color: #555; font-size: 13px; }
.bad { color: #b00020; font-weight: bold; }
pre { background: #f6f6f6; padding: 8px; font-size: 12px; overflow-x: auto; }
nav a { margin-right: 12px; }
"""


def figure(svg: str, alt: str) -> str:
    data = base64.b64encode(svg.encode("utf-8")).decode("ascii")
    return f'<img class="figure" alt="{html.escape(alt)}" src="data:image/svg+xml;base64,{data}">'


def value_text(value) -> str:
    """A table cell's text: numbers to 4 significant digits, booleans as yes / no, None as a dash."""
    if value is None:
        return "&ndash;"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else '<span class="bad">no</span>'
    if isinstance(value, (float, np.floating)):
        return "" if np.isnan(value) else f"{value:.4g}"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return html.escape(str(value))


def table(frame: pd.DataFrame, text_columns=()) -> str:
    """An HTML table of a frame (numbers right-aligned, booleans as yes / no)."""
    head = "".join(f'<th class="{"text" if c in text_columns else ""}">{html.escape(str(c))}</th>'
                   for c in frame.columns)
    body = []
    for row in frame.itertuples(index=False):
        cells = "".join(f'<td class="{"text" if c in text_columns else ""}">{value_text(v)}</td>'
                        for c, v in zip(frame.columns, row))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def key_values(pairs) -> str:
    """A two-column table of ``(name, value)`` pairs."""
    rows = "".join(f'<tr><th class="text">{html.escape(str(k))}</th><td>{value_text(v)}</td></tr>' for k, v in pairs)
    return f"<table>{rows}</table>"


def preformatted(obj) -> str:
    return f"<pre>{html.escape(json.dumps(obj, indent=2, sort_keys=True, default=str))}</pre>"


def page(title: str, sections) -> str:
    """The whole document from ``(anchor, heading, body html)`` sections."""
    nav = "".join(f'<a href="#{a}">{html.escape(h)}</a>' for a, h, _ in sections)
    body = "".join(f'<section id="{a}"><h2>{html.escape(h)}</h2>{content}</section>' for a, h, content in sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
            f"<body><h1>{html.escape(title)}</h1><nav>{nav}</nav>{body}</body></html>\n")

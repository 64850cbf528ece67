"""report.html: one self-contained file — inline CSS, figures embedded as base64 PNG — that opens
offline in any browser and can be mailed or archived without its folder."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from analysis.document import Bullets, Document, Figure, Table

_STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 72rem; padding: 0 1rem; color: #1d1d1f; }
h1 { font-size: 1.6rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; } h3 { margin-top: 1.6rem; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: 13px; }
th, td { border: 1px solid #d0d0d0; padding: .25rem .5rem; vertical-align: top; }
th { background: #f3f3f5; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1rem 0 2rem; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 13px; } code { background: #f3f3f5; padding: 0 .2rem; border-radius: 3px; }
.table-wrap { overflow-x: auto; }
"""


def _inline(text: str) -> str:
    """Escape text for HTML; `backticks` become <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    body = []
    for row in table.rows:
        cells = "".join(f'<td class="num">{_inline(c)}</td>' if num else f"<td>{_inline(c)}</td>" for c, num in zip(row, table.numeric))
        body.append(f"<tr>{cells}</tr>")
    return f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _figure(figure: Figure, figures_dir: Path) -> str:
    png = base64.b64encode((figures_dir / f"{figure.name}.png").read_bytes()).decode()
    caption = _inline(figure.caption)
    return f'<figure id="fig-{figure.name}"><img alt="{html.escape(figure.caption)}" src="data:image/png;base64,{png}"><figcaption>{caption}</figcaption></figure>'


def render_html(document: Document, figures_dir: Path) -> str:
    """The whole report as one HTML page; figures are read from `figures_dir` and embedded."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(document.title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(document.title)}</h1>",
    ]
    for section in document.sections:
        parts.append(f"<h{section.level}>{html.escape(section.title)}</h{section.level}>")
        for block in section.blocks:
            if isinstance(block, Table):
                parts.append(_table(block))
            elif isinstance(block, Bullets):
                parts.append("<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in block.items) + "</ul>")
            elif isinstance(block, Figure):
                parts.append(_figure(block, figures_dir))
            else:
                parts.append(f"<p>{_inline(block)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"

"""report.html: one self-contained file — inline CSS and script, figures embedded as base64 PNG —
that opens offline in any browser and can be mailed or archived without its folder."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from analysis.document import Bullets, Document, Figure, Table

_STYLE = r"""
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 72rem; padding: 0 1rem; color: #1d1d1f; }
h1 { font-size: 1.6rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; } h3 { margin-top: 1.6rem; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: 13px; }
th, td { border: 1px solid #d0d0d0; padding: .25rem .5rem; vertical-align: top; }
th { background: #f3f3f5; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1rem 0 2rem; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 13px; } code { background: #f3f3f5; padding: 0 .2rem; border-radius: 3px; }
.table-wrap { overflow-x: auto; }
.table-wrap.tall { max-height: 75vh; overflow: auto; }
table.interactive td { white-space: nowrap; }
table.interactive th { cursor: pointer; user-select: none; white-space: nowrap; position: sticky; top: 0; z-index: 1; }
table.interactive th::after { content: " \2195"; color: #aaa; }
table.interactive th[aria-sort=ascending]::after { content: " \25B2"; color: #333; }
table.interactive th[aria-sort=descending]::after { content: " \25BC"; color: #333; }
.filter { margin: .6rem 0 0; font-size: 13px; } .filter input { font: inherit; padding: .2rem .4rem; width: 22rem; max-width: 100%; }
"""

# Sorting and filtering of interactive tables, inline so the page needs no network and no server.
# A numeric column sorts by the number its cells start with ("0.412 [0.39, 0.43]", "1,234",
# "3.2×"); cells without one ("—") go last in either direction. The filter keeps rows holding
# every space-separated term, ignoring case.
_SCRIPT = r"""
(() => {
  const leading = text => {
    const found = text.replace(/,/g, "").replace("\u2212", "-").match(/^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?/i);
    return found ? parseFloat(found[0]) : null;
  };
  for (const table of document.querySelectorAll("table.interactive")) {
    const body = table.tBodies[0];
    const rows = Array.from(body.rows);
    const headers = Array.from(table.tHead.rows[0].cells);
    headers.forEach((header, column) => {
      const sort = () => {
        const ascending = header.getAttribute("aria-sort") !== "ascending";
        headers.forEach(h => h.removeAttribute("aria-sort"));
        header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
        const numeric = header.dataset.type === "number";
        const key = row => {
          const text = row.cells[column].textContent.trim();
          return numeric ? leading(text) : (text === "\u2014" ? null : text);
        };
        const keyed = Array.from(body.rows, row => [key(row), row]);
        keyed.sort(([x], [y]) => {
          if (x === null || y === null) return (x === null) - (y === null);
          const order = numeric ? x - y : x.localeCompare(y, undefined, {numeric: true, sensitivity: "base"});
          return ascending ? order : -order;
        });
        body.append(...keyed.map(([, row]) => row));
      };
      header.tabIndex = 0;
      header.addEventListener("click", sort);
      header.addEventListener("keydown", event => {
        if (event.key === "Enter" || event.key === " ") { event.preventDefault(); sort(); }
      });
    });
    const box = document.getElementById(table.dataset.filter);
    const count = document.getElementById(table.dataset.filter + "-count");
    box.addEventListener("input", () => {
      const terms = box.value.toLowerCase().split(/\s+/).filter(Boolean);
      let shown = 0;
      for (const row of rows) {
        const text = row.textContent.toLowerCase();
        row.hidden = !terms.every(term => text.includes(term));
        shown += row.hidden ? 0 : 1;
      }
      count.textContent = shown + " of " + rows.length + " rows";
    });
  }
})();
"""


def _inline(text: str) -> str:
    """Escape text for HTML; `backticks` become <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _table(table: Table, index: int) -> str:
    """A table; an interactive one gets a filter box above it and `data-type` on its headers."""
    kinds = ("number" if num else "text" for num in table.numeric)
    head = "".join(f'<th data-type="{kind}">{html.escape(h)}</th>' if table.interactive else f"<th>{html.escape(h)}</th>" for h, kind in zip(table.headers, kinds))
    body = []
    for row in table.rows:
        cells = "".join(f'<td class="num">{_inline(c)}</td>' if num else f"<td>{_inline(c)}</td>" for c, num in zip(row, table.numeric))
        body.append(f"<tr>{cells}</tr>")
    rows = "".join(body)
    if not table.interactive:
        return f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>'
    box = f"filter-{index}"
    return (
        f'<p class="filter"><label>Filter rows: <input type="search" id="{box}" placeholder="words every shown row contains, e.g. lora greedy"></label> '
        f'<span id="{box}-count">{len(table.rows)} of {len(table.rows)} rows</span> · click a header to sort</p>'
        f'<div class="table-wrap tall"><table class="interactive" data-filter="{box}"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>'
    )


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
    tables = 0
    for section in document.sections:
        parts.append(f"<h{section.level}>{html.escape(section.title)}</h{section.level}>")
        for block in section.blocks:
            if isinstance(block, Table):
                tables += 1
                parts.append(_table(block, tables))
            elif isinstance(block, Bullets):
                parts.append("<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in block.items) + "</ul>")
            elif isinstance(block, Figure):
                parts.append(_figure(block, figures_dir))
            else:
                parts.append(f"<p>{_inline(block)}</p>")
    if any(isinstance(block, Table) and block.interactive for section in document.sections for block in section.blocks):
        parts.append(f"<script>{_SCRIPT}</script>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"

"""results.csv, results_by_config.csv and results_by_slice.csv, and number formatting for tables
people read.

CSV cells are exact and byte-stable: floats as Python's shortest round-trip repr, None as an
empty cell, columns in a fixed order. Readable tables round instead (see `number`).
"""

from __future__ import annotations

import csv
import io
from typing import Any, Sequence

from analysis.stats import Estimate


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    """CSV of rows that share one key order (the first row's); None becomes an empty cell."""
    if not rows:
        return ""
    columns = list(rows[0])
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_cell(row.get(c)) for c in columns])
    return out.getvalue()


def number(value: float | int | None) -> str:
    """A figure for people: about three significant digits, thousands separated, "—" if absent."""
    if value is None:
        return "—"
    if isinstance(value, int):
        return f"{value:,}"
    size = abs(value)
    if size >= 100:
        return f"{value:,.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    if size >= 0.01 or value == 0:
        return f"{value:.3f}"
    return f"{value:.2g}"


def estimate_of(value: Estimate) -> str:
    """An estimate for people: `mean [low, high]` over examples, `mean ± sd [low, high]` across seeds."""
    if value.over == "seeds" and value.mean is not None and value.sd is not None:
        return f"{value.mean:.3f} ± {value.sd:.3f}" + ("" if value.low is None or value.high is None else f" [{value.low:.3f}, {value.high:.3f}]")
    return estimate(value.mean, value.low, value.high)


def estimate(mean: float | None, low: float | None, high: float | None) -> str:
    """mean [low, high] with three decimals, or "—"."""
    if mean is None:
        return "—"
    if low is None or high is None:
        return f"{mean:.3f}"
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"

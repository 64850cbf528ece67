"""`python -m analysis report SOURCE --out DIR`: tables over every completed run under SOURCE."""

from __future__ import annotations

from pathlib import Path

from analysis.aggregate import summarize
from analysis.load import completed_runs
from analysis.tables import to_csv, to_markdown
from runner.storage import LocalStore, open_store


def write_report(source: str, out_dir: Path) -> list[Path]:
    """Write results.csv and report.md for the runs under `source`; return their paths."""
    store = open_store(source)
    rows = sorted((summarize(run) for run in completed_runs(store)), key=lambda r: (r["model"], r["method"], r["shots"], r["decoding"], r["run"]))
    target = LocalStore(out_dir)
    target.write_bytes("results.csv", to_csv(rows).encode())
    target.write_bytes("report.md", to_markdown(rows, source).encode())
    return [out_dir / "results.csv", out_dir / "report.md"]

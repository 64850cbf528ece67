"""`python -m analysis report SOURCE --out DIR`."""

from __future__ import annotations

import argparse
from pathlib import Path

from runner.console import error
from runner.errors import InfraError, UserError


def main(argv: list[str] | None = None) -> int:
    """Entry point; exit 2 for user mistakes, 3 for storage failures."""
    parser = argparse.ArgumentParser(prog="python -m analysis", description="Tables and reports from qabench runs.")
    commands = parser.add_subparsers(dest="command", required=True)
    report = commands.add_parser("report", help="results.csv and report.md over every completed run")
    report.add_argument("source", help="storage folder or URI holding runs (e.g. runs/)")
    report.add_argument("--out", required=True, help="output folder")
    args = parser.parse_args(argv)
    try:
        from analysis.report import write_report

        if not Path(args.source).exists() and "://" not in args.source:
            raise UserError(f"{args.source}: no such folder")
        for path in write_report(args.source, Path(args.out)):
            print(path)
        return 0
    except (UserError, InfraError) as exc:
        error(f"error: {exc}")
        return exc.exit_code

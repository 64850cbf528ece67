"""`python -m analysis report SOURCE --out DIR` and `python -m analysis compare RUN_A RUN_B`."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from runner.atomic import write_atomic
from runner.console import error
from runner.errors import EXIT_DAMAGED, InfraError, UserError
from runner.filemodes import apply_umask_setting


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m analysis", description="Tables, figures and tests over qabench runs.")
    commands = parser.add_subparsers(dest="command", required=True)
    report = commands.add_parser(
        "report", help="results.csv, results.parquet, report.md, report.html and figures over every completed run",
        description="Exit 0: every completed run reported (unfinished ones are listed, not counted); 4: the report was written but "
        "completed runs were left out as damaged, each listed with its reason and the command that repairs it "
        "(python -m runner verify SOURCE --repair, then rerun its manifest); 2: bad arguments or no usable run; 3: storage unreadable.",
    )
    report.add_argument("source", help="storage holding runs: a folder (e.g. runs/), file:///absolute/path or s3://bucket/prefix")
    report.add_argument("--out", required=True, help="output folder")
    report.add_argument("--metrics", nargs="+", help="scorers to apply (default: every registered scorer)")
    report.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    report.add_argument("--jobs", type=int, help="scoring processes (default: CPU count)")
    report.add_argument("--no-figures", action="store_true", help="skip the figures (tables only)")
    report.add_argument(
        "--price-per-gpu-hour", metavar="P",
        help="dollars per GPU-hour: costs (training + 1,000 questions) are also given in dollars (a number ≥ 0, e.g. 2.5)",
    )
    compare = commands.add_parser("compare", help="paired comparison of two runs (or, with --seeds, two configurations seed by seed) on their shared examples")
    compare.add_argument("run_a", metavar="RUN_A", help="run folder runs/<name>/<digest>, or a name/digest within --source")
    compare.add_argument("run_b", metavar="RUN_B")
    compare.add_argument("--source", help="storage to look the runs up in by name")
    compare.add_argument("--metrics", nargs="+", help="scorers to compare (default: every registered scorer)")
    compare.add_argument("--correct", metavar="METRIC", help="metric defining a correct answer for McNemar (default: unifiedqa, else exact_match)")
    compare.add_argument("--threshold", type=float, help="score at which an answer counts as correct (default 1.0)")
    compare.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    compare.add_argument("--jobs", type=int, help="scoring processes (default: CPU count)")
    compare.add_argument("--json", metavar="FILE", help="also write the comparison as JSON")
    compare.add_argument(
        "--seeds", action="store_true",
        help="compare the configurations of RUN_A and RUN_B seed by seed: every completed run of each (same manifest apart from seeds) "
        "in --source, else in the storage holding the run, paired by seed; per seed and over all seeds",
    )
    return parser


def _report(args: argparse.Namespace) -> int:
    from analysis.cost import parse_price
    from analysis.report import write_report
    from analysis.terminal import print_summary
    from runner.storage_uri import parse_storage

    # Checked before anything is read: a typo in the price should not cost a long analysis.
    price = None if args.price_per_gpu_hour is None else parse_price(args.price_per_gpu_hour)
    # The one parser of storage locations (runner/storage_uri.py): a bad URI is one line, exit 2.
    location = parse_storage(args.source, origin="SOURCE")
    if location.path is not None and not location.path.is_dir():
        raise UserError(f"{args.source}: no such folder")
    # The output folder cannot be made under a file: say so before the analysis, not as exit 3 after it.
    blocked = next((p for p in (Path(args.out), *Path(args.out).parents) if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        raise UserError(f"--out {args.out}: {blocked} is a file, not a folder")
    analysis, paths = write_report(args.source, Path(args.out), args.metrics, args.seed, args.jobs, figures=not args.no_figures, price_per_gpu_hour=price)
    for skipped in analysis.skipped:
        error(f"skipped: {skipped}")
    for note in analysis.notes:
        error(f"not compared: {note}")
    for note in analysis.pooled.notes:
        error(f"not pooled: {note}")
    print_summary(analysis.pooled.configs, analysis.headline)
    for path in paths:
        print(path)
    damaged = [s for s in analysis.skipped if s.repair]
    if damaged:
        error(f"{len(damaged)} completed run(s) left out as damaged; the report covers the others (exit {EXIT_DAMAGED})")
        return EXIT_DAMAGED
    return 0


def _differing(differing: tuple) -> dict[str, list]:
    return {name: [a, b] for name, a, b in differing}


def _compare_seeds(args: argparse.Namespace) -> int:
    from analysis.compare import compare_seeds
    from analysis.terminal import print_seed_comparison

    result = compare_seeds(args.run_a, args.run_b, args.source, args.metrics, args.correct, args.threshold, args.seed, args.jobs)
    print_seed_comparison(result)
    if args.json:
        payload = {
            "a": f"{result.a.name}/{result.a.digest}",
            "b": f"{result.b.name}/{result.b.digest}",
            "differing_fields": _differing(result.differing),
            "paired_on": list(result.paired_on),
            "shared_examples": result.shared,
            "seeds": [
                {
                    "seed": pair.seed, "a": f"{pair.a.name}/{pair.a.digest}", "b": f"{pair.b.name}/{pair.b.digest}", "shared_examples": pair.shared,
                    "differences": {m: asdict(d) for m, d in pair.differences.items()},
                    "mcnemar": {"correct": result.correct_rule, **asdict(pair.mcnemar)},
                }
                for pair in result.pairs
            ],
            "over_seeds": {m: asdict(d) for m, d in result.over_seeds.items()},
            "across_seeds": {m: asdict(e) for m, e in result.across_seeds.items()},
            "notes": list(result.notes),
        }
        write_atomic(Path(args.json), json.dumps(payload, indent=2, default=str) + "\n")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from analysis.compare import compare
    from analysis.terminal import print_comparison

    if args.seeds:
        return _compare_seeds(args)
    result = compare(args.run_a, args.run_b, args.source, args.metrics, args.correct, args.threshold, args.seed, args.jobs)
    print_comparison(result)
    if args.json:
        payload = {
            "a": f"{result.a.name}/{result.a.digest}",
            "b": f"{result.b.name}/{result.b.digest}",
            "seed_twins": result.seed_twins,
            "differing_fields": _differing(result.differing),
            "shared_examples": result.shared,
            "differences": {m: asdict(d) for m, d in result.differences.items()},
            "mcnemar": {"correct": result.correct_rule, **asdict(result.mcnemar)},
        }
        write_atomic(Path(args.json), json.dumps(payload, indent=2, default=str) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; exit 2 for user mistakes, 3 for storage failures, 4 when a report left damaged runs out."""
    args = _parser().parse_args(argv)
    try:
        apply_umask_setting()  # the report's files get the modes the runs got; a bad QABENCH_UMASK is exit 2
        return _report(args) if args.command == "report" else _compare(args)
    except (UserError, InfraError) as exc:
        error(f"error: {exc}")
        return exc.exit_code

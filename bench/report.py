"""The report at scale: 1,000 shards × 1,000 rows (1M predictions), qabench's analysis against a
naive per-file pandas loop, in one process on the same files.

The synthetic grid is 20 runs (two models; k-shot series 0-8, six fine-tuning methods,
speculative twins) over one eval set of 50,000 examples from eight UnifiedQA datasets, 50 shards
per run, written in the runner's layout by bench/synthetic_runs.py. Timed stages:

- load: find completed runs, verify and read every shard, one Arrow table with manifest columns;
  naive: `pd.read_parquet` per file, `pd.concat`, manifest fields added per run.
- score: per-example scores; qabench scores each distinct scored input once, on all cores;
  naive: `runner.score.score_rows` on every row (what metrics.json's scoring does per run).
- aggregate: per-run means, 95% bootstrap CIs (overall, per format, per dataset), speed figures;
  naive: pandas groupby means only (no CIs, no speed).

    .venv/bin/python bench/report.py [--dir /tmp/qabench-bench] [--metrics exact_match f1] [--naive-rows N]

`--naive-rows` scores only the first N rows the naive way and scales the time to all rows (says so
in the table); by default every row is scored.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.synthetic_runs import FORMATS, SyntheticRun, eval_examples, write_run  # noqa: E402
from runner.atomic import write_atomic  # noqa: E402

# 50,000 examples × 20 runs = 1,000,000 predictions; 1,000 per shard → 1,000 shards.
EXAMPLES_PER_DATASET = 6250
SHARD_SIZE = 1000


def grid() -> list[SyntheticRun]:
    """20 runs: per model a k-shot series (0-8), fine-tuned methods, and a speculative LoRA twin."""
    runs = []
    for model, slow in (("model-small", 1.0), ("model-large", 3.0)):
        spt = 0.02 * slow
        runs += [SyntheticRun(f"{model}-{k}-shot", model=model, shots=k, accuracy=0.3 + 0.04 * k, seconds_per_token=spt) for k in (0, 1, 2, 4, 8)]
        for i, method in enumerate(("lora", "full") if model == "model-large" else ("lora", "qlora", "ia3", "adalora", "full", "prompt_tuning")):
            runs.append(SyntheticRun(f"{model}-{method}", model=model, method=method, accuracy=0.55 + 0.04 * i, train_seconds=600.0 * slow * (i + 1), seconds_per_token=spt))
        runs.append(SyntheticRun(f"{model}-lora", model=model, method="lora", decoding="speculative", accuracy=0.55, train_seconds=600.0 * slow,
                                 acceptance=0.7, seconds_per_token=spt / 20))
    return runs


def _write(args: tuple[Path, SyntheticRun]) -> None:
    storage, run = args
    write_run(storage, run, eval_examples(EXAMPLES_PER_DATASET, datasets=tuple(FORMATS)), shard_size=SHARD_SIZE)


def generate(storage: Path) -> None:
    """Write the grid once; a finished grid (marker file) is reused."""
    marker = storage / ".complete"
    if marker.exists():
        return
    shutil.rmtree(storage, ignore_errors=True)
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(_write, [(storage, run) for run in grid()]))
    write_atomic(marker, "ok\n")


def ours(storage: Path, metrics: list[str], out: Path) -> dict[str, float]:
    """Stage times of the analysis package; the report goes to `out`."""
    from analysis.aggregate import headline_metric, pool_seeds, summarize
    from analysis.content import build_document
    from analysis.html_page import render_html
    from analysis.markdown import render_markdown
    from analysis.report import Analysis, write_figures, write_tables
    from runner.storage import LocalStore
    from analysis.load import find_runs, load_runs
    from analysis.pairs import paybacks, speed_ups
    from analysis.scores import distinct_inputs, score_table
    from analysis.train_logs import training_curves
    from runner.storage import open_store

    times = {}
    start = time.perf_counter()
    refs, _ = find_runs(open_store(str(storage)))
    loaded = load_runs(refs, show_progress=False)
    times["load"] = time.perf_counter() - start
    start = time.perf_counter()
    scores = score_table(loaded.table, metrics, show_progress=False)
    times["score"] = time.perf_counter() - start
    start = time.perf_counter()
    runs, slices = summarize(loaded, scores)
    headline = headline_metric(metrics)
    ups, _ = speed_ups(runs, headline, loaded.table)
    pooled = pool_seeds(runs, slices)
    backs, _ = paybacks(pooled.configs)
    curves, curve_notes = training_curves([s.run for s in runs])
    times["aggregate"] = time.perf_counter() - start
    start = time.perf_counter()
    analysis = Analysis(str(storage), loaded, metrics, headline, scores, runs, slices, ups, backs, [], curves, curve_notes, pooled_seeds=pooled)
    target = LocalStore(out)
    write_tables(analysis, target)
    drawn = write_figures(analysis, target)
    times["figures"] = len(drawn)
    document = build_document(analysis, drawn)
    target.write_bytes("report.md", render_markdown(document).encode())
    target.write_bytes("report.html", render_html(document, out / "figures").encode())
    times["write"] = time.perf_counter() - start
    times["rows"] = loaded.table.num_rows
    times["distinct"] = len(distinct_inputs(loaded.table)[1])
    times["shards"] = sum(1 for _ in storage.rglob("shard-*.parquet"))
    return times


def naive(storage: Path, metrics: list[str], naive_rows: int | None) -> dict[str, float]:
    """The straightforward pandas way: read each file, concat, score row by row, groupby."""
    import pandas as pd
    import yaml

    from runner.score import score_rows

    times = {}
    start = time.perf_counter()
    frames = []
    for manifest in sorted(storage.rglob("manifest.yaml")):
        run = manifest.parent
        if not (run / "_SUCCESS").exists():
            continue
        spec = yaml.safe_load(manifest.read_text())
        for shard in sorted((run / "predictions").glob("shard-*.parquet")):
            frame = pd.read_parquet(shard)
            frame["run"], frame["method"], frame["shots"] = run.parent.name, spec["method"]["kind"], spec["icl"]["shots"]
            frame["model"], frame["decoding"] = spec["model"]["package"], spec["decoding"]["kind"]
            frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    times["load"] = time.perf_counter() - start
    start = time.perf_counter()
    records = table[["dataset", "format", "prediction", "references", "options"]]
    if naive_rows:
        records = records.iloc[:naive_rows]
    # pandas holds list cells as numpy arrays; the scorers take lists.
    rows = [{**r, "references": list(r["references"]), "options": list(r["options"])} for r in records.to_dict("records")]
    scores = score_rows(rows, metrics)
    elapsed = time.perf_counter() - start
    times["score"] = elapsed * len(table) / len(records)
    times["score_scaled"] = bool(naive_rows and naive_rows < len(table))
    start = time.perf_counter()
    padding = [None] * (len(table) - len(scores))
    for metric in metrics:
        table[metric] = pd.array([s[metric] for s in scores] + padding, dtype="Float64")
    table.groupby(["model", "method", "shots", "decoding", "run"])[metrics].mean()
    times["aggregate"] = time.perf_counter() - start
    return times


def no_repeats(storage: Path, metrics: list[str], sample: int = 20_000) -> float:
    """Estimated scoring seconds if no scored input repeated: one process's rate on `sample`
    distinct rows, times all rows, over the cores the scorer would use."""
    import pyarrow.parquet as pq

    from analysis.scores import SCORED_COLUMNS
    from runner.score import score_rows

    shards = sorted(storage.rglob("shard-*.parquet"))
    rows: list[dict] = []
    for shard in shards[:: max(1, len(shards) // 40)]:
        rows += pq.read_table(shard, columns=list(SCORED_COLUMNS)).to_pylist()[: sample // 40]
    start = time.perf_counter()
    score_rows(rows, metrics)
    per_row = (time.perf_counter() - start) / len(rows)
    return per_row * 1_000_000 / (os.cpu_count() or 1)


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/qabench-bench-report"), help="where the synthetic runs are written (reused)")
    parser.add_argument("--metrics", nargs="+", help="scorers (default: every registered scorer)")
    parser.add_argument("--naive-rows", type=int, help="score only this many rows the naive way and scale up")
    parser.add_argument("--skip-naive", action="store_true")
    args = parser.parse_args()
    from runner.scoring import SCORERS

    metrics = args.metrics or list(SCORERS.discover())
    start = time.perf_counter()
    generate(args.dir)
    print(f"synthetic runs ready in {time.perf_counter() - start:.1f} s: {args.dir}", flush=True)
    mine = ours(args.dir, metrics, args.dir.with_name(args.dir.name + "-out"))
    print(f"qabench: {mine}", flush=True)
    worst = no_repeats(args.dir, metrics)
    theirs = naive(args.dir, metrics, args.naive_rows) if not args.skip_naive else None
    if theirs:
        print(f"naive: {theirs}", flush=True)
    size = sum(p.stat().st_size for p in args.dir.rglob("shard-*.parquet"))
    print()
    print(f"{time.strftime('%Y-%m-%d')}, {_cpu()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"{mine['shards']:,} shards, {mine['rows']:,} rows, {size / 2**20:.0f} MiB of Parquet; metrics: {', '.join(metrics)}; "
          f"{mine['distinct']:,} distinct scored inputs ({mine['distinct'] / mine['rows']:.0%} of rows)")
    print()
    print("| stage | qabench s | naive pandas s | naive ÷ qabench |")
    print("|---|---:|---:|---:|")
    for stage in ("load", "score", "aggregate"):
        other = theirs[stage] if theirs else None
        note = " (scaled from a sample)" if theirs and stage == "score" and theirs["score_scaled"] else ""
        ratio = f"{other / mine[stage]:.1f}×" if other and mine[stage] else "—"
        print(f"| {stage} | {mine[stage]:.1f} | {'—' if other is None else f'{other:.1f}{note}'} | {ratio} |")
    total = mine["load"] + mine["score"] + mine["aggregate"]
    other_total = sum(theirs[s] for s in ("load", "score", "aggregate")) if theirs else None
    ratio = f"{other_total / total:.1f}×" if other_total else "—"
    print(f"| **total** | **{total:.1f}** | {'—' if other_total is None else f'{other_total:.1f}'} | {ratio} |")
    print(f"| write report (CSV, 1M-row Parquet, Markdown, HTML, {mine['figures']} figures) | {mine['write']:.1f} | — | — |")
    print()
    print(f"Scoring if no input repeated (every prediction distinct), estimated from {20_000:,} rows: {worst:.0f} s on {os.cpu_count()} cores.")


if __name__ == "__main__":
    main()

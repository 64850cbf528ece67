"""`python -m analysis report SOURCE --out DIR`: load, score, aggregate, write every artifact.

Artifacts (in DIR): results.csv (one row per run, with its seeds, configuration id and cost),
results_by_config.csv (one row per configuration, its seeds pooled), results_by_slice.csv (per
run × format and run × dataset), results.parquet (one row per example, with scores), report.md,
report.html (self-contained; its results table sorts and filters), figures/*.png and *.svg. Each
file is written atomically.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow.parquet as pq

from analysis import decision_plots, plots
from analysis.aggregate import Pooled, Summary, as_row, config_row, headline_metric, pool_seeds, summarize
from analysis.choice import Scope, scopes
from analysis.cost import cost_columns
from analysis.document import Figure
from analysis.labels import config_numbers
from analysis.load import Loaded, Skipped, find_runs, load_runs
from analysis.pairs import Payback, SpeedUp, paybacks, speed_ups
from analysis.scores import metric_order, score_table, with_scores
from analysis.tables import to_csv
from analysis.train_logs import TrainingCurve, training_curves
from runner.errors import UserError
from runner.paths import MANIFEST_FILE, SUCCESS_FILE
from runner.storage import LocalStore, open_store


@dataclass(frozen=True)
class Analysis:
    """Everything computed from a SOURCE, before anything is written."""

    source: str
    loaded: Loaded
    metrics: list[str]
    headline: str | None
    scores: dict[str, np.ndarray]
    runs: list[Summary]
    slices: list[Summary]
    speed_ups: list[SpeedUp]
    paybacks: list[Payback]
    notes: list[str]
    """Pairs of runs a view would have compared but did not, because their eval data differ."""
    curves: list[TrainingCurve] = field(default_factory=list)
    """Loss curves of the trainings the runs used, one per training."""
    curve_notes: list[str] = field(default_factory=list)
    """Trainings without a usable train_log.jsonl, and why."""
    price_per_gpu_hour: float | None = None
    """Dollars per GPU-hour (`--price-per-gpu-hour`); None reports GPU-hours only."""
    pooled_seeds: Pooled | None = None
    """`pooled` when analyse() already computed it (the paybacks are built from it)."""

    @property
    def skipped(self) -> tuple[Skipped, ...]:
        return self.loaded.skipped

    @cached_property
    def pooled(self) -> Pooled:
        """One summary per configuration, runs that differ only in seeds pooled (tables, figures)."""
        return self.pooled_seeds or pool_seeds(self.runs, self.slices)

    @cached_property
    def numbers(self) -> dict[int, int]:
        """id(run) → its configuration's # in the results table and the figures."""
        return config_numbers(self.pooled.configs)

    @cached_property
    def scopes(self) -> list[Scope]:
        """The accuracy-versus-cost menu overall and per answer format ([] without a headline metric)."""
        return scopes(self.pooled.configs, self.pooled.slices, self.headline, self.loaded.table) if self.headline else []

    @property
    def seeded(self) -> bool:
        """Whether some configuration was run with several seeds."""
        return any(s.seeds for s in self.pooled.configs)


def analyse(
    source: str, metrics: Sequence[str] | None = None, seed: int = 0, jobs: int | None = None, show_progress: bool = True, price_per_gpu_hour: float | None = None
) -> Analysis:
    """Load every completed run under `source`, score and aggregate; UserError if none is usable."""
    store = open_store(source)
    refs, unfinished = find_runs(store)
    if not refs and not unfinished:
        hint = "; it is one run's folder: pass the storage folder two levels up" if store.exists(MANIFEST_FILE) else ""
        raise UserError(f"{source}: no runs found (expected <name>/<digest>/{SUCCESS_FILE} folders under it){hint}")
    loaded = load_runs(refs, show_progress=show_progress)
    loaded = Loaded(loaded.table, loaded.runs, tuple(unfinished) + loaded.skipped)
    if not loaded.runs:
        listing = "\n".join(f"  skipped {s}" for s in loaded.skipped)
        raise UserError(f"{source}: no usable completed run\n{listing}")
    chosen = metric_order(metrics, (r.manifest.get("eval", {}).get("metrics", ()) for r in loaded.runs))
    scores = score_table(loaded.table, chosen, jobs, show_progress)
    runs, slices = summarize(loaded, scores, seed)
    headline = headline_metric(chosen)
    ups, up_notes = speed_ups(runs, headline, loaded.table)
    # Per configuration, like the other tables: a fine-tuned configuration's seeds pay back one
    # (mean) training time, drawn as one line in the break-even figure.
    pooled = pool_seeds(runs, slices)
    backs, back_notes = paybacks(pooled.configs)
    curves, curve_notes = training_curves([s.run for s in runs])
    notes = list(dict.fromkeys(up_notes + back_notes))
    return Analysis(source, loaded, chosen, headline, scores, runs, slices, ups, backs, notes, curves, curve_notes, price_per_gpu_hour, pooled)


def write_figures(analysis: Analysis, target: LocalStore) -> list[Figure]:
    """Every figure the runs support, headline metric first."""
    figures: list[Figure | None] = []
    ordered = ([analysis.headline] if analysis.headline else []) + [m for m in analysis.metrics if m != analysis.headline]
    configs, slices, numbers = analysis.pooled.configs, analysis.pooled.slices, analysis.numbers
    figures += [plots.metric_bars(configs, m, numbers, target) for m in ordered]
    if analysis.headline:
        figures += [
            decision_plots.cost_pareto(analysis.scopes, analysis.headline, numbers, target),
            plots.quality_vs_speed(configs, analysis.headline, numbers, target),
            plots.quality_vs_memory(configs, analysis.headline, numbers, target),
            plots.format_heatmap(configs, slices, analysis.headline, numbers, target),
            plots.shots_curve(configs, analysis.headline, target),
        ]
    figures.append(plots.speed_up_bars(analysis.speed_ups, analysis.runs, numbers, target))
    figures.append(decision_plots.breakeven(analysis.paybacks, configs, numbers, target))
    figures.append(decision_plots.loss_curves(analysis.curves, numbers, target))
    return [f for f in figures if f is not None]


def write_tables(analysis: Analysis, target: LocalStore) -> list[str]:
    """results.csv, results_by_config.csv, results_by_slice.csv and results.parquet; returns their keys."""
    price = analysis.price_per_gpu_hour
    target.write_bytes("results.csv", to_csv([{**as_row(s, analysis.metrics), **cost_columns(s, price)} for s in analysis.runs]).encode())
    configs = [{**config_row(s, analysis.metrics), **cost_columns(s, price)} for s in analysis.pooled.configs]
    target.write_bytes("results_by_config.csv", to_csv(configs).encode())
    target.write_bytes("results_by_slice.csv", to_csv([as_row(s, analysis.metrics) for s in analysis.slices]).encode())
    sink = io.BytesIO()
    pq.write_table(with_scores(analysis.loaded.table, analysis.scores), sink, compression="zstd")
    target.write_bytes("results.parquet", sink.getvalue())
    return ["results.csv", "results_by_config.csv", "results_by_slice.csv", "results.parquet"]


def write_report(
    source: str, out_dir: Path, metrics: Sequence[str] | None = None, seed: int = 0, jobs: int | None = None, show_progress: bool = True, figures: bool = True,
    price_per_gpu_hour: float | None = None,
) -> tuple[Analysis, list[Path]]:
    """Analyse `source` and write every artifact into `out_dir`; return the analysis and the paths."""
    from analysis.content import build_document
    from analysis.html_page import render_html
    from analysis.markdown import render_markdown

    analysis = analyse(source, metrics, seed, jobs, show_progress, price_per_gpu_hour)
    target = LocalStore(out_dir)
    written = write_tables(analysis, target)
    drawn = write_figures(analysis, target) if figures else []
    document = build_document(analysis, drawn)
    target.write_bytes("report.md", render_markdown(document).encode())
    target.write_bytes("report.html", render_html(document, Path(out_dir) / "figures").encode())
    written += ["report.md", "report.html"]
    return analysis, [Path(out_dir) / key for key in written]

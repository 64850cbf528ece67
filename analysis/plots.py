"""Figures, one function each; every figure is written as PNG (embedded in report.html) and SVG.

Each function returns the figure's `Figure` record, or None when the runs hold nothing to plot
(no speculative runs, no k-shot series), so the report shows only figures that say something.
"""

from __future__ import annotations

import io
from collections import Counter
from typing import Any, Callable, Sequence

import numpy as np

from analysis.aggregate import Summary
from analysis.document import Figure
from analysis.pairs import SpeedUp
from runner.storage import LocalStore

DPI = 110


def _pyplot() -> Any:
    # Imported here: matplotlib takes ~1 s to import and only report writing needs it.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Fixed ids in the SVG files, so reruns write identical bytes.
    plt.rcParams["svg.hashsalt"] = "qabench"
    plt.rcParams["font.size"] = 9
    return plt


def _save(fig: Any, name: str, target: LocalStore) -> None:
    plt = _pyplot()
    for kind, metadata in (("png", {"Software": None}), ("svg", {"Date": None, "Creator": None})):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=kind, dpi=DPI, bbox_inches="tight", metadata=metadata)
        target.write_bytes(f"figures/{name}.{kind}", buffer.getvalue())
    plt.close(fig)


def display_labels(summaries: Sequence[Summary]) -> dict[int, str]:
    """id(summary) → its configuration label, with the run name added where one model has two
    runs of the same method, shots and decoding (say LoRA r=4 and r=16), and the seed count of a
    configuration whose seeds were pooled."""
    counts = Counter((s.run.model, s.run.label) for s in summaries)
    labels = {}
    for s in summaries:
        tags = ([s.run.name] if counts[(s.run.model, s.run.label)] > 1 else []) + ([f"{s.n_seeds} seeds"] if s.seeds else [])
        labels[id(s)] = s.run.label + (f" ({', '.join(tags)})" if tags else "")
    return labels


def _colors(n: int) -> list[Any]:
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _errors(means: list[float], lows: list[float], highs: list[float]) -> np.ndarray:
    # Bounds are rounded to 1e-6, so a bound can sit a hair on the wrong side of its mean.
    return np.array([[max(0.0, m - lo) for m, lo in zip(means, lows)], [max(0.0, hi - m) for m, hi in zip(means, highs)]])


def metric_bars(summaries: Sequence[Summary], metric: str, target: LocalStore) -> Figure | None:
    """Mean of one metric, bars grouped by model, one bar per configuration, 95% CI whiskers."""
    present = [s for s in summaries if s.quality[metric].mean is not None]
    if not present:
        return None
    plt = _pyplot()
    labels = display_labels(present)
    models = list(dict.fromkeys(s.run.model for s in present))
    configs = list(dict.fromkeys(labels[id(s)] for s in present))
    width = 0.8 / len(configs)
    fig, ax = plt.subplots(figsize=(min(16, max(6.0, 1.5 + len(models) * (0.32 * len(configs) + 0.8))), 4.2))
    for i, (config, color) in enumerate(zip(configs, _colors(len(configs)))):
        chosen = [(models.index(s.run.model), s.quality[metric]) for s in present if labels[id(s)] == config]
        xs = [m + (i - (len(configs) - 1) / 2) * width for m, _ in chosen]
        means = [e.mean for _, e in chosen]
        lows = [e.low if e.low is not None else e.mean for _, e in chosen]
        highs = [e.high if e.high is not None else e.mean for _, e in chosen]
        ax.bar(xs, means, width, yerr=_errors(means, lows, highs), capsize=2, label=config, color=color)
    ax.set_xticks(range(len(models)), models)
    ax.set_ylabel(f"{metric} (mean)")
    pooled = any(s.seeds for s in present)
    whiskers = "95% CI; over seeds: t-interval" if pooled else "95% bootstrap CI"
    ax.set_title(f"{metric} by model and configuration (whiskers: {whiskers})")
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left", title="method · shots · decoding", title_fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    name = f"bars_{metric}"
    _save(fig, name, target)
    if pooled:
        return Figure(name, f"{metric} per model and configuration, with 95% confidence intervals: a bootstrap over examples for one run, a t-interval over the per-seed means for a configuration run with several seeds.")
    return Figure(name, f"{metric} per model and configuration, with 95% bootstrap confidence intervals.")


def _scatter(summaries: Sequence[Summary], headline: str, x_of: Callable[[Summary], float | None], target: LocalStore, name: str, xlabel: str, pareto: bool) -> bool:
    points = [(x_of(s), s.quality[headline].mean, s) for s in summaries]
    points = [(x, y, s) for x, y, s in points if x is not None and y is not None]
    if not points:
        return False
    plt = _pyplot()
    labels = display_labels(summaries)
    models = list(dict.fromkeys(s.run.model for _, _, s in points))
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for model, color in zip(models, _colors(len(models))):
        mine = [(x, y, s) for x, y, s in points if s.run.model == model]
        ax.scatter([x for x, _, _ in mine], [y for _, y, _ in mine], color=color, label=model, zorder=3)
        for x, y, s in mine:
            ax.annotate(labels[id(s)], (x, y), fontsize=6, xytext=(4, 3), textcoords="offset points")
    if pareto:
        front = pareto_front([(x, y) for x, y, _ in points])
        ax.plot([x for x, _ in front], [y for _, y in front], color="0.35", linestyle="--", drawstyle="steps-pre", label="Pareto front", zorder=2)
    xs = [x for x, _, _ in points]
    if min(xs) > 0 and max(xs) / min(xs) > 30:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{headline} (mean)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, name, target)
    return True


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats on both coordinates (higher is better on both), by rising x."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (-p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front[::-1]


def quality_vs_speed(summaries: Sequence[Summary], headline: str, target: LocalStore) -> Figure | None:
    """Headline metric against generated tokens/s, with the Pareto front of the two."""
    name = "pareto_speed"
    if not _scatter(summaries, headline, lambda s: s.speed["generated_tokens_per_second"], target, name, "generated tokens / s", True):
        return None
    return Figure(name, f"{headline} against generation speed; the dashed line joins runs no other run beats on both.")


def _peak(summary: Summary) -> float | None:
    peaks = [v for v in (summary.training["train_peak_memory_gib"], summary.speed["generation_peak_memory_gib"]) if v is not None]
    return max(peaks) if peaks else None


def quality_vs_memory(summaries: Sequence[Summary], headline: str, target: LocalStore) -> Figure | None:
    """Headline metric against the run's peak memory (training or generation, whichever is higher)."""
    name = "memory"
    if not _scatter(summaries, headline, _peak, target, name, "peak memory, GiB (max of training and generation)", False):
        return None
    return Figure(name, f"{headline} against peak memory: the memory a configuration needs, training included.")


def format_heatmap(summaries: Sequence[Summary], slices: Sequence[Summary], headline: str, target: LocalStore) -> Figure | None:
    """Headline metric per run (rows) and answer format (columns)."""
    by_format = [s for s in slices if s.slice_kind == "format"]
    if not by_format:
        return None
    plt = _pyplot()
    labels = display_labels(summaries)
    formats = sorted({s.slice_value for s in by_format})
    rows = [(f"{s.run.model} · {labels[id(s)]}", s.run) for s in summaries]
    grid = np.full((len(rows), len(formats)), np.nan)
    index = {id(run): i for i, (_, run) in enumerate(rows)}
    for s in by_format:
        if s.quality[headline].mean is not None and id(s.run) in index:
            grid[index[id(s.run)], formats.index(s.slice_value)] = s.quality[headline].mean
    fig, ax = plt.subplots(figsize=(2.2 + 1.3 * len(formats), 1.2 + 0.32 * len(rows)))
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", aspect="auto", vmin=np.nanmin(grid) if np.isfinite(grid).any() else 0)
    for (r, c), value in np.ndenumerate(grid):
        if not np.isnan(value):
            ax.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=7, color="white" if value < np.nanmean(grid) else "black")
    ax.set_xticks(range(len(formats)), formats)
    ax.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize=7)
    fig.colorbar(image, ax=ax, label=headline)
    ax.set_title(f"{headline} by answer format")
    _save(fig, "heatmap_format", target)
    return Figure("heatmap_format", f"{headline} per run and answer format.")


def speed_up_bars(speed_ups: Sequence[SpeedUp], summaries: Sequence[Summary], target: LocalStore) -> Figure | None:
    """Speed-up of each non-greedy run over its greedy twin, labelled with its acceptance rate."""
    shown = [u for u in speed_ups if u.speed_up is not None]
    if not shown:
        return None
    plt = _pyplot()
    labels = display_labels(summaries)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(shown) + 2), 4.0))
    names = [f"{u.run.run.model}\n{labels.get(id(u.run), u.run.run.label)}" for u in shown]
    bars = ax.bar(range(len(shown)), [u.speed_up for u in shown], color=_colors(len(shown)))
    for bar, u in zip(bars, shown):
        text = f"{u.speed_up:.2f}×" + (f"\naccept {u.acceptance_rate:.2f}" if u.acceptance_rate is not None else "")
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
    ax.axhline(1.0, color="0.3", linewidth=0.8)
    ax.set_xticks(range(len(shown)), names, fontsize=7)
    ax.set_ylabel("generated tokens/s ÷ greedy's")
    ax.set_title("Decoding speed-up over greedy (label: draft acceptance rate)")
    ax.margins(y=0.2)
    _save(fig, "speed_up", target)
    return Figure("speed_up", "Generation speed of each decoding strategy over greedy decoding of the same run, with the share of draft tokens accepted.")


def shots_curve(summaries: Sequence[Summary], headline: str, target: LocalStore) -> Figure | None:
    """Headline metric against the number of shots for untrained runs, fine-tuned runs as lines."""
    models = [m for m in dict.fromkeys(s.run.model for s in summaries) if len({s.run.shots for s in summaries if s.run.model == m and not s.run.train}) >= 2]
    if not models:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 4.0), squeeze=False)
    for ax, model in zip(axes[0], models):
        mine = [s for s in summaries if s.run.model == model and s.quality[headline].mean is not None]
        prompted = [s for s in mine if not s.run.train]
        decodings = list(dict.fromkeys(s.run.decoding for s in prompted))
        tuned = [s for s in mine if s.run.train]
        colors = _colors(len(decodings) + len(tuned))
        for decoding, color in zip(decodings, colors):
            series = sorted((s for s in prompted if s.run.decoding == decoding), key=lambda s: s.run.shots)
            means = [s.quality[headline].mean for s in series]
            lows = [s.quality[headline].low if s.quality[headline].low is not None else s.quality[headline].mean for s in series]
            highs = [s.quality[headline].high if s.quality[headline].high is not None else s.quality[headline].mean for s in series]
            ax.errorbar([s.run.shots for s in series], means, yerr=_errors(means, lows, highs), marker="o", capsize=3, color=color, label=f"prompting ({decoding})")
        for s, color in zip(tuned, colors[len(decodings):]):
            estimate = s.quality[headline]
            ax.axhline(estimate.mean, linestyle="--", color=color, label=f"{s.run.method} ({s.run.shots}-shot, {s.run.decoding})")
            if estimate.low is not None:
                ax.axhspan(estimate.low, estimate.high, color=color, alpha=0.1)
        ax.set_xlabel("shots (k)")
        ax.set_ylabel(f"{headline} (mean)")
        ax.set_title(model)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save(fig, "shots_curve", target)
    return Figure("shots_curve", f"{headline} against the number of in-context examples, beside fine-tuned methods (dashed, CI shaded).")

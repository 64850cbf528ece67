"""Figures of quality, speed and memory, one function each; every figure is written as PNG
(embedded in report.html) and SVG.

Each function returns the figure's `Figure` record, or None when the runs hold nothing to plot
(no speculative runs, no k-shot series), so the report shows only figures that say something.
They stay legible at a grid of 100+ configurations: one panel per model, configurations on the
long (vertical) axis, colour by model or method and marker by method, and only the points on a
Pareto front labelled — with the configuration's # from the results table.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from analysis.aggregate import Summary
from analysis.document import Figure
from analysis.labels import display_labels
from analysis.pairs import SpeedUp
from analysis.plot_style import MARKERS, MAX_WIDTH_IN, colors, keyed, panel_grid, place_labels, pyplot, save, staircase
from runner.storage import LocalStore

# Inches per bar or heatmap row: room for one line of 7-point text.
ROW_IN = 0.22


def _errors(means: list[float], lows: list[float], highs: list[float]) -> np.ndarray:
    # Bounds are rounded to 1e-6, so a bound can sit a hair on the wrong side of its mean.
    return np.array([[max(0.0, m - lo) for m, lo in zip(means, lows)], [max(0.0, hi - m) for m, hi in zip(means, highs)]])


def _number(numbers: dict[int, int], summary: Summary) -> str:
    return f"#{numbers[id(summary.run)]}" if id(summary.run) in numbers else ""


def metric_bars(summaries: Sequence[Summary], metric: str, numbers: dict[int, int], target: LocalStore) -> Figure | None:
    """Mean of one metric with 95% CI whiskers: a panel per model, a bar per configuration
    (labelled with its # and configuration), coloured by method."""
    present = [s for s in summaries if s.quality[metric].mean is not None]
    if not present:
        return None
    plt = pyplot()
    labels = display_labels(present)
    models = list(dict.fromkeys(s.run.model for s in present))
    method_color = dict(zip(keyed([s.run.method for s in present]), colors(len(set(s.run.method for s in present)))))
    per_model = [[s for s in present if s.run.model == m] for m in models]
    columns = 1 if len(models) == 1 else 2
    rows = [per_model[i : i + columns] for i in range(0, len(models), columns)]
    heights = [0.9 + ROW_IN * max(len(group) for group in row) for row in rows]
    fig, axes = plt.subplots(
        len(rows), columns, figsize=(MAX_WIDTH_IN, sum(heights)), squeeze=False, layout="constrained", gridspec_kw={"height_ratios": heights}
    )
    flat = [ax for row in axes for ax in row]
    for ax in flat[len(models):]:
        ax.set_visible(False)
    # One x range for every panel, so bar lengths compare across models; for a metric within
    # [0, 1] the range stops at 1 (a t-interval over two seeds can reach far past it).
    means = [s.quality[metric].mean for s in present]
    highs = [s.quality[metric].high if s.quality[metric].high is not None else s.quality[metric].mean for s in present]
    right = max(max(means), min(max(highs), 1.0)) if max(means) <= 1 else max(highs)
    for ax, model, mine in zip(flat, models, per_model):
        estimates = [s.quality[metric] for s in mine]
        means = [e.mean for e in estimates]
        lows = [e.low if e.low is not None else e.mean for e in estimates]
        highs = [e.high if e.high is not None else e.mean for e in estimates]
        ys = np.arange(len(mine))
        ax.barh(ys, means, xerr=_errors(means, lows, highs), capsize=2, color=[method_color[s.run.method] for s in mine], error_kw={"lw": 0.8})
        ax.set_yticks(ys, [f"{_number(numbers, s)} {labels[id(s)]}".strip() for s in mine], fontsize=6.5)
        ax.invert_yaxis()
        ax.set_title(model, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlabel(f"{metric} (mean)", fontsize=8)
        ax.set_xlim(min(0.0, *(e.mean for e in estimates)), right * 1.05 if right > 0 else 1.0)
    pooled = any(s.seeds for s in present)
    whiskers = "95% CI; over seeds: t-interval" if pooled else "95% bootstrap CI"
    fig.suptitle(f"{metric} by configuration (whiskers: {whiskers}; colour: method)", fontsize=9)
    if pooled:
        caption = (
            f"{metric} per model and configuration, with 95% confidence intervals: a bootstrap over examples for one run, "
            "a t-interval over the per-seed means for a configuration run with several seeds; # is the configuration's number in the results table."
        )
    else:
        caption = f"{metric} per model and configuration, with 95% bootstrap confidence intervals; # is the configuration's number in the results table."
    return save(fig, f"bars_{metric}", caption, target)


def pareto_front(points: Sequence[tuple[float, float]], lower_x_is_better: bool = False) -> list[tuple[float, float]]:
    """Points no other point beats on both coordinates (higher y is better; higher x unless
    `lower_x_is_better`), by rising x."""
    sign = 1 if lower_x_is_better else -1
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (sign * p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return sorted(front)


def scatter_by_model(ax, points: Sequence[tuple[float, float, Summary]], models: dict[str, int], methods: dict[str, int], palette: list, faded: bool = False) -> None:
    """Points coloured by model and shaped by method (the legend from `legend_handles`)."""
    for x, y, s in points:
        ax.scatter([x], [y], color=palette[models[s.run.model]], marker=MARKERS[methods[s.run.method] % len(MARKERS)], s=22, alpha=0.45 if faded else 0.9, zorder=3, linewidths=0)


def legend_handles(models: dict[str, int], methods: dict[str, int], palette: list) -> list:
    """Legend entries: a coloured dot per model, a grey marker per method."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=palette[i], marker="o", linestyle="", label=model) for model, i in models.items()]
    handles += [Line2D([], [], color="0.35", marker=MARKERS[i % len(MARKERS)], linestyle="", label=method) for method, i in methods.items()]
    return handles


def _scatter(summaries: Sequence[Summary], headline: str, x_of: Callable[[Summary], float | None], numbers: dict[int, int], target: LocalStore,
             name: str, xlabel: str, lower_x_is_better: bool, caption: str) -> Figure | None:
    points = [(x_of(s), s.quality[headline].mean, s) for s in summaries]
    points = [(x, y, s) for x, y, s in points if x is not None and y is not None]
    if not points:
        return None
    plt = pyplot()
    models = keyed([s.run.model for _, _, s in points])
    methods = keyed([s.run.method for _, _, s in points])
    palette = colors(len(models))
    fig, ax = plt.subplots(figsize=(8.0, 5.2), layout="constrained")
    scatter_by_model(ax, points, models, methods, palette)
    front = pareto_front([(x, y) for x, y, _ in points], lower_x_is_better)
    ax.plot([x for x, _ in front], [y for _, y in front], color="0.35", linestyle="--", drawstyle="steps-post" if lower_x_is_better else "steps-pre", zorder=2)
    xs = [x for x, _, _ in points]
    if min(xs) > 0 and max(xs) / min(xs) > 30:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{headline} (mean)")
    ax.grid(alpha=0.3)
    handles = legend_handles(models, methods, palette)
    fig.legend(handles=handles, loc="outside right upper", fontsize=7, title="colour: model; marker: method", title_fontsize=7)
    on_front = set(front)
    chosen = [(x, y, s) for x, y, s in points if (x, y) in on_front]
    place_labels(ax, [(x, y) for x, y, _ in chosen], [_number(numbers, s) for _, _, s in chosen], avoid=[(x, y) for x, y, _ in points],
                 lines=[staircase(front, post=lower_x_is_better)])
    return save(fig, name, caption, target)


def quality_vs_speed(summaries: Sequence[Summary], headline: str, numbers: dict[int, int], target: LocalStore) -> Figure | None:
    """Headline metric against generated tokens/s, with the Pareto front of the two."""
    caption = f"{headline} against generation speed; the dashed line joins configurations no other beats on both, labelled with their # in the results table."
    return _scatter(summaries, headline, lambda s: s.speed["generated_tokens_per_second"], numbers, target, "pareto_speed", "generated tokens / s", False, caption)


def _peak(summary: Summary) -> float | None:
    peaks = [v for v in (summary.training["train_peak_memory_gib"], summary.speed["generation_peak_memory_gib"]) if v is not None]
    return max(peaks) if peaks else None


def quality_vs_memory(summaries: Sequence[Summary], headline: str, numbers: dict[int, int], target: LocalStore) -> Figure | None:
    """Headline metric against the run's peak memory (training or generation, whichever is higher)."""
    caption = (
        f"{headline} against peak memory: the memory a configuration needs, training included; the dashed line joins "
        "configurations no other beats on both (less memory, higher score), labelled with their # in the results table."
    )
    return _scatter(summaries, headline, _peak, numbers, target, "memory", "peak memory, GiB (max of training and generation)", True, caption)


def format_heatmap(summaries: Sequence[Summary], slices: Sequence[Summary], headline: str, numbers: dict[int, int], target: LocalStore) -> Figure | None:
    """Headline metric per configuration (rows) and answer format (columns)."""
    by_format = [s for s in slices if s.slice_kind == "format"]
    if not by_format:
        return None
    plt = pyplot()
    labels = display_labels(summaries)
    formats = sorted({s.slice_value for s in by_format})
    rows = [(f"{_number(numbers, s)} {s.run.model} · {labels[id(s)]}".strip(), s.run) for s in summaries]
    grid = np.full((len(rows), len(formats)), np.nan)
    index = {id(run): i for i, (_, run) in enumerate(rows)}
    for s in by_format:
        if s.quality[headline].mean is not None and id(s.run) in index:
            grid[index[id(s.run)], formats.index(s.slice_value)] = s.quality[headline].mean
    width = min(MAX_WIDTH_IN, 4.5 + 1.1 * len(formats))
    fig, ax = plt.subplots(figsize=(width, 1.3 + ROW_IN * len(rows)), layout="constrained")
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", aspect="auto", vmin=np.nanmin(grid) if np.isfinite(grid).any() else 0)
    for (r, c), value in np.ndenumerate(grid):
        if not np.isnan(value):
            ax.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=6.5, color="white" if value < np.nanmean(grid) else "black")
    ax.set_xticks(range(len(formats)), formats, fontsize=7)
    ax.xaxis.tick_top()
    ax.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize=6.5)
    fig.colorbar(image, ax=ax, label=headline, shrink=min(1.0, 8 / max(1, len(rows)) + 0.3))
    ax.set_title(f"{headline} by answer format", fontsize=9)
    return save(fig, "heatmap_format", f"{headline} per configuration and answer format; # is the configuration's number in the results table.", target)


def speed_up_bars(speed_ups: Sequence[SpeedUp], summaries: Sequence[Summary], numbers: dict[int, int], target: LocalStore) -> Figure | None:
    """Speed-up of each non-greedy run over its greedy twin, labelled with its acceptance rate."""
    shown = [u for u in speed_ups if u.speed_up is not None]
    if not shown:
        return None
    plt = pyplot()
    labels = display_labels(summaries)
    decodings = keyed([u.run.run.decoding for u in shown])
    palette = colors(len(decodings))
    fig, ax = plt.subplots(figsize=(8.0, 1.2 + 1.4 * ROW_IN * len(shown)), layout="constrained")
    ys = np.arange(len(shown))
    bars = ax.barh(ys, [u.speed_up for u in shown], color=[palette[decodings[u.run.run.decoding]] for u in shown])
    for bar, u in zip(bars, shown):
        text = f" {u.speed_up:.2f}×" + (f", accept {u.acceptance_rate:.2f}" if u.acceptance_rate is not None else "")
        ax.annotate(text, (bar.get_width(), bar.get_y() + bar.get_height() / 2), ha="left", va="center", fontsize=6.5)
    ax.axvline(1.0, color="0.3", linewidth=0.8)
    names = [f"{_number(numbers, u.run)} {u.run.run.model} · {labels.get(id(u.run), u.run.run.label)}".strip() for u in shown]
    ax.set_yticks(ys, names, fontsize=6.5)
    ax.invert_yaxis()
    ax.set_xlabel("generated tokens/s ÷ greedy's")
    ax.set_title("Decoding speed-up over greedy (label: draft acceptance rate)", fontsize=9)
    ax.margins(x=0.25)
    caption = "Generation speed of each decoding strategy over greedy decoding of the same run, with the share of draft tokens accepted."
    return save(fig, "speed_up", caption, target)


def shots_curve(summaries: Sequence[Summary], headline: str, target: LocalStore) -> Figure | None:
    """Headline metric against the number of shots for untrained runs (a line per decoding),
    fine-tuned runs as horizontal lines (colour: method, line style: decoding); a panel per model."""
    models = [m for m in dict.fromkeys(s.run.model for s in summaries) if len({s.run.shots for s in summaries if s.run.model == m and not s.run.train}) >= 2]
    if not models:
        return None
    from matplotlib.lines import Line2D

    present = [s for s in summaries if s.run.model in models and s.quality[headline].mean is not None]
    prompted_decodings = keyed([s.run.decoding for s in present if not s.run.train])
    tuned_decodings = keyed([s.run.decoding for s in present if s.run.train])
    methods = keyed([s.run.method for s in present if s.run.train])
    method_colors = colors(len(methods))
    dashes = ("--", ":", "-.", (0, (5, 1, 1, 1)))

    def grey(i: int) -> str:
        return str(0.1 + 0.25 * (i % 3))

    fig, axes = panel_grid(len(models), 3, 3.0)
    for ax, model in zip(axes, models):
        mine = [s for s in present if s.run.model == model]
        for decoding, i in prompted_decodings.items():
            series = sorted((s for s in mine if not s.run.train and s.run.decoding == decoding), key=lambda s: s.run.shots)
            if not series:
                continue
            means = [s.quality[headline].mean for s in series]
            lows = [s.quality[headline].low if s.quality[headline].low is not None else s.quality[headline].mean for s in series]
            highs = [s.quality[headline].high if s.quality[headline].high is not None else s.quality[headline].mean for s in series]
            ax.errorbar([s.run.shots for s in series], means, yerr=_errors(means, lows, highs), marker=MARKERS[i % len(MARKERS)], capsize=3, color=grey(i))
        tuned = [s for s in mine if s.run.train]
        for s in tuned:
            color = method_colors[methods[s.run.method]]
            estimate = s.quality[headline]
            ax.axhline(estimate.mean, linestyle=dashes[tuned_decodings[s.run.decoding] % len(dashes)], color=color, linewidth=1.1)
            # Bands of more than a few runs would cover each other and the k-shot line.
            if estimate.low is not None and len(tuned) <= 4:
                ax.axhspan(estimate.low, estimate.high, color=color, alpha=0.08)
        ax.set_xlabel("shots (k)", fontsize=8)
        ax.set_ylabel(f"{headline} (mean)", fontsize=8)
        ax.set_title(model, fontsize=9)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=grey(i), marker=MARKERS[i % len(MARKERS)], label=f"k-shot prompting, {d}") for d, i in prompted_decodings.items()]
    handles += [Line2D([], [], color=method_colors[i], linestyle="--", label=f"fine-tuned: {m}") for m, i in methods.items()]
    if len(tuned_decodings) > 1:
        handles += [Line2D([], [], color="0.4", linestyle=dashes[i % len(dashes)], label=f"fine-tuned, {d}") for d, i in tuned_decodings.items()]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(4, len(handles)), fontsize=7)
    caption = f"{headline} against the number of in-context examples, beside fine-tuned methods (horizontal lines; CI shaded when a panel has at most four)."
    return save(fig, "shots_curve", caption, target)

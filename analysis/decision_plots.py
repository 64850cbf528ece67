"""Figures that help choose a setup: accuracy against cost with its Pareto front per answer
format, the loss curves of every training, and when fine-tuning pays back its training cost
against k-shot prompting. One function each, returning a `Figure` or None."""

from __future__ import annotations

from typing import Sequence

from analysis.aggregate import Summary
from analysis.choice import SCOPE_NAMES, Scope
from analysis.document import Figure
from analysis.labels import display_labels
from analysis.pairs import Payback
from analysis.plot_style import MARKERS, colors, keyed, panel_grid, place_labels, save, staircase
from analysis.plots import legend_handles, scatter_by_model
from analysis.train_logs import TrainingCurve
from runner.storage import LocalStore


def cost_pareto(scopes: Sequence[Scope], headline: str, numbers: dict[int, int], target: LocalStore) -> Figure | None:
    """Headline metric against cost (GPU-hours to train and answer 1,000 questions), a panel per
    scope (all questions, then each format); the front joined and its points numbered."""
    shown = [s for s in scopes if s.options]
    if not shown:
        return None
    every = [o.config for s in shown for o in s.options]
    models = keyed([c.run.model for c in every])
    methods = keyed([c.run.method for c in every])
    palette = colors(len(models))
    fig, axes = panel_grid(len(shown), 2, 3.6)
    placements = []
    for ax, scope in zip(axes, shown):
        front = set(id(o) for o in scope.front)
        points = [(o.cost.gpu_hours, o.accuracy.mean, o.config) for o in scope.options]
        scatter_by_model(ax, [p for p, o in zip(points, scope.options) if id(o) not in front], models, methods, palette, faded=True)
        scatter_by_model(ax, [p for p, o in zip(points, scope.options) if id(o) in front], models, methods, palette)
        ax.plot([o.cost.gpu_hours for o in scope.front], [o.accuracy.mean for o in scope.front], color="0.35", linestyle="--", drawstyle="steps-post", zorder=2)
        costs = [x for x, _, _ in points]
        if min(costs) > 0 and max(costs) / min(costs) > 30:
            ax.set_xscale("log")
        ax.set_title(SCOPE_NAMES.get(scope.name, scope.name), fontsize=9)
        ax.set_xlabel("GPU-hours: training + 1,000 questions", fontsize=8)
        ax.set_ylabel(f"{headline} (mean)", fontsize=8)
        ax.grid(alpha=0.3)
        placements.append((ax, scope, points))
    fig.legend(handles=legend_handles(models, methods, palette), loc="outside lower center", ncols=min(6, len(models) + len(methods)), fontsize=7)
    for ax, scope, points in placements:
        front = [(o.cost.gpu_hours, o.accuracy.mean) for o in scope.front]
        place_labels(ax, front, [f"#{numbers.get(id(o.config.run), '?')}" for o in scope.front], avoid=[(x, y) for x, y, _ in points], lines=[staircase(front)])
    caption = (
        f"{headline} against cost (GPU-hours to train and to answer 1,000 questions), for all questions and per answer format. "
        "The dashed staircase joins the configurations no other beats on both (the Pareto front), numbered as in the results table; "
        "faded points are beaten by one of them."
    )
    return save(fig, "pareto_cost", caption, target)


def loss_curves(curves: Sequence[TrainingCurve], numbers: dict[int, int], target: LocalStore) -> Figure | None:
    """Training and held-out loss by step, a panel per training (drawn once however many runs use it)."""
    if not curves:
        return None
    from matplotlib.lines import Line2D

    fig, axes = panel_grid(len(curves), 4, 2.3)
    for ax, curve in zip(axes, curves):
        if curve.train:
            ax.plot([s for s, _ in curve.train], [v for _, v in curve.train], color="C0", linewidth=1.0)
        if curve.heldout:
            ax.plot([s for s, _ in curve.heldout], [v for _, v in curve.heldout], color="C1", linestyle="--", marker="o", markersize=2.5, linewidth=1.0)
        run = curve.runs[0]
        used = ", ".join(dict.fromkeys(f"#{numbers[id(r)]}" for r in curve.runs if id(r) in numbers))
        seed = (run.manifest.get("train") or {}).get("seed")
        ax.set_title(f"{run.model} · {run.method}\n{used} · seed {seed} · training {curve.digest[:8]}", fontsize=7)
        ax.tick_params(labelsize=6.5)
        ax.set_xlabel("step", fontsize=7)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color="C0", label="training loss"), Line2D([], [], color="C1", linestyle="--", marker="o", markersize=3, label="held-out loss")]
    fig.legend(handles=handles, loc="outside upper center", ncols=2, fontsize=7)
    caption = (
        "Training loss (every `logging_steps`) and held-out loss (before the first step, every `eval_steps`, after the last) of each training, "
        "from its `train_log.jsonl`; the panel title names the configurations (#) evaluated with it."
    )
    return save(fig, "loss_curves", caption, target)


def _unit(paybacks: Sequence[Payback]) -> tuple[str, float]:
    """GPU-hours when some training took half an hour or more, else GPU-seconds: (name, seconds per unit)."""
    largest = max((p.train_gpu_seconds or 0.0) for p in paybacks)
    return ("GPU-hours", 3600.0) if largest >= 1800 else ("GPU-seconds", 1.0)


def breakeven(paybacks: Sequence[Payback], summaries: Sequence[Summary], numbers: dict[int, int], target: LocalStore) -> Figure | None:
    """Cumulative cost against queries: per k-shot prompting run a panel, its line from 0, each
    fine-tuned run's line from its training cost, and the crossing (the break-even) marked.

    A panel per prompted run because a pair's per-query costs are both priced at that run's
    measured prefill throughput (analysis/pairs.py): every line of a panel shares one rate, so the
    crossings are exactly the break-even numbers of the report's table.
    """
    drawable = [p for p in paybacks if p.prompted_seconds_per_query is not None and p.train_gpu_seconds is not None]
    if not drawable:
        return None
    from matplotlib.lines import Line2D

    labels = display_labels(summaries)
    groups: dict[int, list[Payback]] = {}
    for p in drawable:
        groups.setdefault(id(p.prompted), []).append(p)
    unit, per_unit = _unit(drawable)
    methods = keyed([p.tuned.run.method for p in drawable])
    palette = colors(len(methods))
    fig, axes = panel_grid(len(groups), 3, 2.7)
    crossings = []
    for ax, pairs in zip(axes, groups.values()):
        prompted = pairs[0].prompted
        known = [p.breakeven_queries for p in pairs if p.breakeven_queries is not None]
        # Past the last crossing by a quarter; without any, far enough to show the lines part.
        span = 1.25 * max(known) if known else 10 * max(p.train_gpu_seconds / p.prompted_seconds_per_query for p in pairs if p.prompted_seconds_per_query)  # type: ignore[operator]
        span = max(span, 10.0)
        ax.plot([0, span], [0, span * pairs[0].prompted_seconds_per_query / per_unit], color="0.15", linewidth=1.4)  # type: ignore[operator]
        points, texts = [], []
        drawn = [[(0.0, 0.0), (span, span * pairs[0].prompted_seconds_per_query / per_unit)]]  # type: ignore[operator]
        for p in pairs:
            start = p.train_gpu_seconds / per_unit  # type: ignore[operator]
            slope = p.tuned_seconds_per_query / per_unit  # type: ignore[operator]
            color = palette[methods[p.tuned.run.method]]
            drawn.append([(0.0, start), (span, start + span * slope)])
            ax.plot([0, span], [start, start + span * slope], color=color, linestyle="--", linewidth=1.1, marker=MARKERS[methods[p.tuned.run.method] % len(MARKERS)], markevery=[0], markersize=4)
            if p.breakeven_queries is not None:
                y = start + p.breakeven_queries * slope
                ax.plot([p.breakeven_queries], [y], marker="o", color=color, markeredgecolor="black", markersize=5, zorder=4)
                points.append((p.breakeven_queries, y))
                texts.append(f"#{numbers.get(id(p.tuned.run), '?')}: {p.breakeven_queries:,}")
        ax.set_xlim(0, span)
        ax.set_ylim(bottom=0)
        ax.set_title(f"#{numbers.get(id(prompted.run), '?')} {prompted.run.model} · {labels.get(id(prompted), prompted.run.label)}", fontsize=7)
        ax.tick_params(labelsize=6.5)
        ax.set_xlabel("queries", fontsize=7)
        ax.set_ylabel(f"cumulative {unit}", fontsize=7)
        ax.grid(alpha=0.3)
        crossings.append((ax, points, texts, drawn))
    handles = [Line2D([], [], color="0.15", linewidth=1.4, label="k-shot prompting (panel title), from 0")]
    handles += [Line2D([], [], color=palette[i], linestyle="--", marker=MARKERS[i % len(MARKERS)], label=f"fine-tuned: {m}, from its training cost") for m, i in methods.items()]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(3, len(handles)), fontsize=7)
    for ax, points, texts, drawn in crossings:
        place_labels(ax, points, texts, fontsize=6.5, lines=drawn)
    caption = (
        f"When fine-tuning pays back its training: cumulative {unit} against queries answered, for each k-shot prompting configuration "
        "(its line starts at 0) and each fine-tuned configuration of the same model and decoding (its line starts at its training cost). "
        "A query costs its prompt's prefill at the prompting run's measured throughput; where the lines cross (dot: #fine-tuned: queries) "
        "the shorter fine-tuned prompts have repaid the training — the break-even of the table above."
    )
    if not any(p.breakeven_queries for p in drawable):
        caption += " No fine-tuned prompt here is shorter, so no line crosses."
    return save(fig, "breakeven", caption, target)

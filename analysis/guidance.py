"""The report's sections that help choose a setup: the results table (one row per configuration,
sortable and filterable in HTML, its # the number every figure uses), which configuration to
pick per answer format and overall (the accuracy-versus-cost front in words), and the trainings'
loss curves."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from analysis.aggregate import Summary
from analysis.choice import SCOPE_NAMES, advice
from analysis.cost import cost_of
from analysis.document import Block, Bullets, Figure, Section, Table
from analysis.labels import display_labels
from analysis.tables import estimate_of, number

if TYPE_CHECKING:
    from analysis.report import Analysis


def prompt_label(summary: Summary) -> str:
    """The rows' prompt format, with the protocol when it is not `generate`; "—" when unrecorded."""
    run = summary.run
    parts = [run.prompt_format or ""] + ([run.protocol] if run.protocol and run.protocol != "generate" else [])
    return " · ".join(p for p in parts if p) or "—"


def records_prompts(configs: Sequence[Summary]) -> bool:
    """Whether any configuration's shards record a prompt format or protocol (older ones do not)."""
    return any(s.run.prompt_format or s.run.protocol for s in configs)


def _mean(summary: Summary | None, metric: str) -> str:
    if summary is None or summary.quality[metric].mean is None:
        return "—"
    return f"{summary.quality[metric].mean:.3f}"


def results_section(analysis: Analysis) -> Section:
    """Every configuration in one table: identity, headline metric overall and per format, cost."""
    configs, headline, price = analysis.pooled.configs, analysis.headline, analysis.price_per_gpu_hour
    formats = [s.name for s in analysis.scopes if s.name != "overall"]
    by_format = {(id(s.run), s.slice_value): s for s in analysis.pooled.slices if s.slice_kind == "format"}
    prompts, seeded = records_prompts(configs), analysis.seeded
    headers = ["#", "model", "method", "shots", "decoding", *(["prompt"] if prompts else []), *(["seeds"] if seeded else []), "n"]
    numeric = [True, False, False, True, False, *([False] if prompts else []), *([True] if seeded else []), True]
    if headline:
        headers += [f"{headline} [95% CI]", *(SCOPE_NAMES.get(f, f) for f in formats)]
        numeric += [True] * (1 + len(formats))
    headers += ["cost GPU-h", *(["cost $"] if price is not None else []), "train GPU-h", "eval GPU-h / 1k q", "gen tok/s", "peak GiB", "run"]
    numeric += [True] * (5 + (price is not None)) + [False]
    rows = []
    for s in configs:
        spent = cost_of(s)
        row = [str(analysis.numbers[id(s.run)]), s.run.model, s.run.method, str(s.run.shots), s.run.decoding]
        row += [prompt_label(s)] if prompts else []
        row += [number(s.n_seeds)] if seeded else []
        row.append(number(s.n))
        if headline:
            row += [estimate_of(s.quality[headline]), *(_mean(by_format.get((id(s.run), f)), headline) for f in formats)]
        row.append(number(spent.gpu_hours))
        row += [number(spent.dollars(price))] if price is not None else []
        peaks = [v for v in (s.training.get("train_peak_memory_gib"), s.speed.get("generation_peak_memory_gib")) if v is not None]
        row += [number(spent.train_gpu_hours), number(spent.eval_gpu_hours_per_1000), number(s.speed.get("generated_tokens_per_second")), number(max(peaks) if peaks else None)]
        row.append(f"config {s.run.name} × {s.n_seeds} seeds" if s.seeds else f"{s.run.name}/{s.run.digest}")
        rows.append(tuple(row))
    per_format = f"; then `{headline}` over each answer format's questions" if headline and formats else ""
    text = (
        f"One row per configuration (runs that differ only in seeds pooled){per_format}; cost in GPU-hours to train and answer "
        "1,000 questions (definition at the end). # numbers the configurations in every figure. In report.html, click a "
        "header to sort and type in the box to keep the rows that contain every word typed."
    )
    return Section("Results", (text, Table(tuple(headers), tuple(rows), tuple(numeric), interactive=True)))


def choice_section(analysis: Analysis, figure: Figure | None) -> Section | None:
    """Per scope, the accuracy-versus-cost front in words, then as a table and a figure."""
    if not analysis.headline or not analysis.scopes:
        return None
    price, headline = analysis.price_per_gpu_hour, analysis.headline
    labels = display_labels(analysis.pooled.configs)
    sentences = tuple(advice(scope, analysis.numbers, labels, price) for scope in analysis.scopes)
    rows = []
    for scope in analysis.scopes:
        for option in reversed(scope.front):
            config = option.config
            row = [SCOPE_NAMES.get(scope.name, scope.name), str(analysis.numbers[id(config.run)]), config.run.model, labels[id(config)],
                   estimate_of(option.accuracy), number(option.cost.gpu_hours)]
            row += [number(option.cost.dollars(price))] if price is not None else []
            row += [number(option.cost.train_gpu_hours), number(option.cost.eval_gpu_hours_per_1000)]
            rows.append(tuple(row))
    headers = ("questions", "#", "model", "configuration", f"{headline} [95% CI]", "cost GPU-h", *(["cost $"] if price is not None else []),
               "train GPU-h", "eval GPU-h / 1k q")
    table = Table(headers, tuple(rows), (False, True, False, False, True, True, *([True] if price is not None else []), True, True))
    dollars = f" Dollars at ${price:,.2f} per GPU-hour (`--price-per-gpu-hour`)." if price is not None else " Pass `--price-per-gpu-hour P` for dollars."
    intro = (
        f"Accuracy is `{headline}`; cost is GPU-hours to train a configuration and answer 1,000 questions with it "
        f"(definition at the end).{dollars} A configuration is on the front when no other is at least as accurate for "
        "at most its cost; everything else is beaten on both by one on it."
    )
    blocks: list[Block] = [intro, Bullets(sentences), "The fronts, most accurate first:", table]
    if figure is not None:
        blocks.append(figure)
    return Section("Which to pick", tuple(blocks))


def training_section(analysis: Analysis, figure: Figure | None) -> Section | None:
    """The loss-curve figure and what kept a training from having one."""
    if figure is None and not analysis.curve_notes:
        return None
    blocks: list[Block] = []
    if figure is not None:
        blocks.append(f"{len(analysis.curves)} training(s), each drawn once whatever number of evaluations used it.")
        blocks.append(figure)
    if analysis.curve_notes:
        blocks += ["No curve:", Bullets(tuple(analysis.curve_notes))]
    return Section("Training curves", tuple(blocks))

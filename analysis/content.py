"""What the report says: the analysis turned into a Document (sections, tables, figures)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from analysis.aggregate import Summary
from analysis.document import Block, Bullets, Document, Figure, Section, Table
from analysis.tables import estimate, number
from runner.paths import METRICS_FILE, SUCCESS_FILE

if TYPE_CHECKING:
    from analysis.report import Analysis

_COST_COLUMNS = (
    ("trainable %", "training", "trainable_percent"),
    ("train s", "training", "train_seconds"),
    ("train tok/s", "training", "train_tokens_per_second"),
    ("held-out ppl", "training", "heldout_perplexity"),
    ("train peak GiB", "training", "train_peak_memory_gib"),
    ("gen tok/s", "speed", "generated_tokens_per_second"),
    ("prompt tok/s", "speed", "prompt_tokens_per_second"),
    ("examples/s", "speed", "examples_per_second"),
    ("TTFT p50 s", "speed", "time_to_first_token_p50"),
    ("latency p50 s", "speed", "latency_p50"),
    ("latency p95 s", "speed", "latency_p95"),
    ("gen peak GiB", "speed", "generation_peak_memory_gib"),
    ("acceptance", "speed", "acceptance_rate"),
)

DEFINITIONS = (
    f"Every number is recomputed from the prediction shards of completed runs (`{SUCCESS_FILE}` present) with the current "
    f"scorers; training figures come from each run's `{METRICS_FILE}`. A metric's mean is over the examples it scores "
    "(a metric that does not apply to an example, such as yes/no accuracy on a span question, leaves it out). "
    "Brackets give a 95% percentile bootstrap interval over examples (1,000 resamples, seeded per run and metric). "
    "gen tok/s counts generated answer tokens per second of generation; prompt tok/s is prefill throughput (prompt "
    "tokens over time to first token); an example's latency is its batch's wall time; peak memory is the CUDA "
    "allocator peak on GPUs, the process's resident peak on CPU; acceptance is the share of draft tokens the "
    "target model accepted. held-out ppl is the perplexity of held-out train-split answers after training."
)


def _identity(summary: Summary) -> tuple[str, str, str]:
    return summary.run.method, str(summary.run.shots), summary.run.decoding


def _model_sections(runs: Sequence[Summary], metrics: Sequence[str]) -> list[Section]:
    sections = []
    for model in dict.fromkeys(s.run.model for s in runs):
        mine = [s for s in runs if s.run.model == model]
        quality = Table(
            ("method", "shots", "decoding", "n", *metrics, "run"),
            tuple(
                (*_identity(s), number(s.n), *(estimate(s.quality[m].mean, s.quality[m].low, s.quality[m].high) for m in metrics), f"{s.run.name}/{s.run.digest}")
                for s in mine
            ),
            (False, True, False, True, *([True] * len(metrics)), False),
        )
        cost = Table(
            ("method", "shots", "decoding", *(h for h, _, _ in _COST_COLUMNS)),
            tuple((*_identity(s), *(number(getattr(s, part)[key]) for _, part, key in _COST_COLUMNS)) for s in mine),
            (False, True, False, *([True] * len(_COST_COLUMNS))),
        )
        sections.append(Section(f"Model: {model}", ("Quality: mean [95% CI].", quality, "Training, speed and memory.", cost)))
    return sections


def _slice_section(runs: Sequence[Summary], slices: Sequence[Summary], kind: str, headline: str, title: str) -> Section | None:
    mine = [s for s in slices if s.slice_kind == kind]
    values = sorted({s.slice_value for s in mine})
    if not values:
        return None
    cell = {(id(s.run), s.slice_value): s for s in mine}
    rows = []
    for s in runs:
        cells = []
        for value in values:
            part = cell.get((id(s.run), value))
            cells.append("—" if part is None else f"{estimate(part.quality[headline].mean, part.quality[headline].low, part.quality[headline].high)} (n={part.n})")
        rows.append((s.run.model, *_identity(s), *cells))
    table = Table(("model", "method", "shots", "decoding", *values), tuple(rows), (False, False, True, False, *([True] * len(values))))
    return Section(title, (f"`{headline}` per {kind}: mean [95% CI] (examples).", table))


def _speed_up_section(analysis: Analysis) -> Section | None:
    if not analysis.speed_ups:
        return None
    rows = tuple(
        (
            u.run.run.model, u.run.run.method, str(u.run.run.shots), u.run.run.decoding,
            number(u.run.speed["generated_tokens_per_second"]), number(u.baseline.speed["generated_tokens_per_second"]),
            "—" if u.speed_up is None else f"{u.speed_up:.2f}×", number(u.acceptance_rate),
            "—" if u.quality_change is None else f"{u.quality_change:+.3f}", f"{u.run.run.name}/{u.run.run.digest} vs {u.baseline.run.name}/{u.baseline.run.digest}",
        )
        for u in analysis.speed_ups
    )
    headline = analysis.headline or ""
    table = Table(
        ("model", "method", "shots", "decoding", "gen tok/s", "greedy gen tok/s", "speed-up", "acceptance", f"Δ {headline}", "runs"),
        rows,
        (False, False, True, False, True, True, True, True, True, False),
    )
    text = "Each non-greedy run against the greedy run whose manifest is the same apart from decoding."
    return Section("Decoding speed-up over greedy", (text, table))


def _payback_section(analysis: Analysis) -> Section | None:
    if not analysis.paybacks:
        return None
    headline = analysis.headline or ""
    rows = tuple(
        (
            p.tuned.run.model, f"{p.tuned.run.method} ({p.tuned.run.shots}-shot)", f"{p.prompted.run.method} ({p.prompted.run.shots}-shot)",
            p.tuned.run.decoding,
            number(p.tuned.quality[headline].mean if headline else None), number(p.prompted.quality[headline].mean if headline else None),
            number(p.tuned.speed["prompt_tokens_mean"]), number(p.prompted.speed["prompt_tokens_mean"]),
            number(p.prompt_tokens_per_second), number(p.seconds_saved_per_query), number(p.train_seconds),
            "—" if p.breakeven_queries is None else f"{p.breakeven_queries:,}",
        )
        for p in analysis.paybacks
    )
    table = Table(
        ("model", "fine-tuned", "prompting", "decoding", f"{headline} tuned", f"{headline} prompted", "prompt tok/query tuned",
         "prompt tok/query prompted", "prompt tok/s", "s saved/query", "train s", "break-even queries"),
        rows,
        (False, False, False, False, *([True] * 8)),
    )
    text = (
        "For each fine-tuned run and each k-shot prompting run of the same model and decoding: the prompt tokens a query "
        "saves × 1 / the prompting run's measured prefill throughput = seconds saved per query; break-even = train seconds "
        "/ seconds saved per query (— when the fine-tuned prompt is not shorter). Generation time is left out: answers are "
        "about as long either way."
    )
    return Section("Fine-tuning cost against k-shot prompting", (text, table))


def build_document(analysis: Analysis, figures: Sequence[Figure]) -> Document:
    """The report's sections in reading order."""
    loaded = analysis.loaded
    overview = (
        f"Source: `{analysis.source}` — {len(loaded.runs)} completed run(s), {loaded.table.num_rows:,} predictions"
        + (f", {len(analysis.skipped)} item(s) skipped (listed below)" if analysis.skipped else "")
        + f". Metrics: {', '.join(f'`{m}`' for m in analysis.metrics)}"
        + (f"; figures lead with `{analysis.headline}`." if analysis.headline else ".")
    )
    sections: list[Section] = [Section("Overview", (overview,))]
    if analysis.skipped:
        sections.append(Section("Skipped", ("Left out of every table; nothing was changed or deleted.", Bullets(tuple(str(s) for s in analysis.skipped)))))
    if analysis.notes:
        sections.append(Section("Not compared", (Bullets(tuple(analysis.notes)),)))
    sections += _model_sections(analysis.runs, analysis.metrics)
    if analysis.headline:
        for kind, title in (("format", "Per answer format"), ("dataset", "Per dataset")):
            section = _slice_section(analysis.runs, analysis.slices, kind, analysis.headline, title)
            if section:
                sections.append(section)
    for section in (_speed_up_section(analysis), _payback_section(analysis)):
        if section:
            sections.append(section)
    if figures:
        blocks: list[Block] = list(figures)
        sections.append(Section("Figures", tuple(blocks)))
    sections.append(Section("How the numbers are computed", (DEFINITIONS,)))
    return Document("qabench report", tuple(sections))

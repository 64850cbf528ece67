"""What the report says: the analysis turned into a Document (sections, tables, figures)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from analysis.aggregate import Summary, varying_seeds
from analysis.cost import DEFINITION as COST_DEFINITION
from analysis.document import Block, Bullets, Document, Figure, Section, Table
from analysis.guidance import choice_section, prompt_label, records_prompts, results_section, training_section
from analysis.load import not_held_out
from analysis.pairs import SpeedUp
from analysis.seeds import config_id, seed_label, seeds_of
from analysis.tables import estimate, estimate_of, number
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
    "target model accepted. held-out ppl is the perplexity of held-out train-split answers after training. "
    "Runs whose manifests differ only in seeds (`train.seed`, `icl.seed`, a decoding strategy's `seed`), evaluated "
    "with the same model weights on the same data, are one configuration and share one row: the mean of the per-seed "
    "means (each seed weighs the same), ± their sample standard deviation, and in brackets a 95% t-interval over the "
    "k per-seed means (mean ± t(0.975, k−1)·sd/√k; wide with few seeds, t(0.975, 2) = 4.30, and not clipped to the "
    "metric's range). That interval is about the seed — training, the shots drawn, "
    "sampling — on this fixed eval set; each seed's own bootstrap interval over examples is in the Seeds section and "
    "results.csv. Speed and training figures of such a row are means over its seeds. Runs that differ in anything else "
    "are never pooled. A configuration's label is method · k-shot · decoding, followed by the prompt format (`chat` or "
    "`plain`) and the protocol when it is not `generate`, where the shards record them; # is its row in the Results table."
)


def _identity(summary: Summary) -> tuple[str, str, str]:
    return summary.run.method, str(summary.run.shots), summary.run.decoding


def _runs_cell(summary: Summary) -> str:
    if summary.seeds:
        return f"config {config_id(summary.run)}: {summary.run.name} and {summary.n_seeds - 1} more seed(s) (Seeds)"
    return f"{summary.run.name}/{summary.run.digest}"


def _model_sections(configs: Sequence[Summary], metrics: Sequence[str], seeded: bool) -> list[Section]:
    sections = []
    # The seeds column appears only when some configuration has several: otherwise every row is one run.
    seed_header = ("seeds",) if seeded else ()
    # The prompt column appears only when the shards record prompt formats (older ones do not).
    prompts = records_prompts(configs)
    prompt_header = ("prompt",) if prompts else ()
    for model in dict.fromkeys(s.run.model for s in configs):
        mine = [s for s in configs if s.run.model == model]
        quality = Table(
            ("method", "shots", "decoding", *prompt_header, *seed_header, "n", *metrics, "run"),
            tuple(
                (*_identity(s), *((prompt_label(s),) if prompts else ()), *((number(s.n_seeds),) if seeded else ()), number(s.n),
                 *(estimate_of(s.quality[m]) for m in metrics), _runs_cell(s))
                for s in mine
            ),
            (False, True, False, *((False,) if prompts else ()), *((True,) if seeded else ()), True, *([True] * len(metrics)), False),
        )
        cost = Table(
            ("method", "shots", "decoding", *(h for h, _, _ in _COST_COLUMNS)),
            tuple((*_identity(s), *(number(getattr(s, part)[key]) for _, part, key in _COST_COLUMNS)) for s in mine),
            (False, True, False, *([True] * len(_COST_COLUMNS))),
        )
        caption = "Quality: mean [95% CI]."
        if seeded:
            caption = (
                "Quality: mean [95% bootstrap CI over examples] for a configuration run once; mean ± sd across seeds "
                "[95% t-interval over the per-seed means] for a configuration run with several seeds (n: examples per seed)."
            )
        costs = "Training, speed and memory." + (" Means over seeds where there are several." if seeded else "")
        sections.append(Section(f"Model: {model}", (caption, quality, costs, cost)))
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
            seeds = f" × {part.n_seeds} seeds" if part is not None and part.seeds else ""
            cells.append("—" if part is None else f"{estimate_of(part.quality[headline])} (n={part.n}{seeds})")
        rows.append((s.run.model, *_identity(s), *cells))
    table = Table(("model", "method", "shots", "decoding", *values), tuple(rows), (False, False, True, False, *([True] * len(values))))
    across = "; across seeds, mean ± sd [t-interval]" if any(s.seeds for s in runs) else ""
    return Section(title, (f"`{headline}` per {kind}: mean [95% CI] (examples){across}.", table))


def _seeds_section(configs: Sequence[Summary], metrics: Sequence[str]) -> Section | None:
    pooled = [s for s in configs if s.seeds]
    if not pooled:
        return None
    rows = []
    for config in pooled:
        fields = varying_seeds(config)
        for s in config.seeds:
            quality = (estimate(s.quality[m].mean, s.quality[m].low, s.quality[m].high) for m in metrics)
            rows.append((s.run.model, *_identity(s), config_id(s.run), seed_label(seeds_of(s.run.manifest), fields), number(s.n), *quality, f"{s.run.name}/{s.run.digest}"))
    table = Table(
        ("model", "method", "shots", "decoding", "config", "seed", "n", *metrics, "run"),
        tuple(rows),
        (False, False, True, False, False, False, True, *([True] * len(metrics)), False),
    )
    text = (
        "Every run of a configuration run with several seeds, one row per seed: mean [95% bootstrap CI over examples]. "
        "The model tables pool these rows (mean ± sd [t-interval] across seeds); `seed` shows the seed fields that vary."
    )
    return Section("Seeds", (text, table))


def _speed_up_section(analysis: Analysis) -> Section | None:
    if not analysis.speed_ups:
        return None
    rows = tuple(
        (
            u.run.run.model, u.run.run.method, str(u.run.run.shots), u.run.run.decoding,
            number(u.run.speed["generated_tokens_per_second"]), number(u.baseline.speed["generated_tokens_per_second"]),
            "—" if u.speed_up is None else f"{u.speed_up:.2f}×", number(u.acceptance_rate),
            "—" if u.quality_change is None else f"{u.quality_change:+.3f}", _identical(u),
            f"{u.run.run.name}/{u.run.run.digest} vs {u.baseline.run.name}/{u.baseline.run.digest}",
        )
        for u in analysis.speed_ups
    )
    headline = analysis.headline or ""
    table = Table(
        ("model", "method", "shots", "decoding", "gen tok/s", "greedy gen tok/s", "speed-up", "acceptance", f"Δ {headline}", "identical answers", "runs"),
        rows,
        (False, False, True, False, True, True, True, True, True, True, False),
    )
    text = (
        "Each non-greedy run against the greedy run whose manifest is the same apart from decoding. Identical answers: the share "
        "of the examples both answered whose answer is the same string as greedy's. Speculative decoding and prompt lookup keep "
        "only tokens the target model itself picks greedily, so they should give 100%; less means numerical differences "
        "(batch shapes, kernels) changed an argmax somewhere. Sampling differs from greedy by design."
    )
    return Section("Decoding speed-up over greedy", (text, table))


def _identical(up: SpeedUp) -> str:
    share = up.identical_share
    return "—" if share is None else f"{share:.1%} ({up.identical:,}/{up.compared:,})"


def _payback_section(analysis: Analysis, figure: Figure | None) -> Section | None:
    if not analysis.paybacks:
        return None
    headline = analysis.headline or ""
    numbers = analysis.numbers
    rows = tuple(
        (
            p.tuned.run.model, f"#{numbers[id(p.tuned.run)]} {p.tuned.run.method} ({p.tuned.run.shots}-shot)",
            f"#{numbers[id(p.prompted.run)]} {p.prompted.run.method} ({p.prompted.run.shots}-shot)",
            p.tuned.run.decoding,
            number(p.tuned.quality[headline].mean if headline else None), number(p.prompted.quality[headline].mean if headline else None),
            number(p.tuned.speed["prompt_tokens_mean"]), number(p.prompted.speed["prompt_tokens_mean"]),
            number(p.prompt_tokens_per_second), number(p.seconds_saved_per_query), number(p.train_gpu_seconds),
            "—" if p.breakeven_queries is None else f"{p.breakeven_queries:,}",
        )
        for p in analysis.paybacks
    )
    table = Table(
        ("model", "fine-tuned", "prompting", "decoding", f"{headline} tuned", f"{headline} prompted", "prompt tok/query tuned",
         "prompt tok/query prompted", "prompt tok/s", "s saved/query", "train GPU-s", "break-even queries"),
        rows,
        (False, False, False, False, *([True] * 8)),
    )
    text = (
        "For each fine-tuned configuration and each k-shot prompting configuration of the same model and decoding (seeds "
        "pooled: their mean training time and throughput): the prompt tokens a query "
        "saves × 1 / the prompting run's measured prefill throughput = seconds saved per query; break-even = training "
        "GPU-seconds (wall time × devices) / seconds saved per query (— when the fine-tuned prompt is not shorter). "
        "Generation time is left out: answers are about as long either way."
    )
    return Section("Fine-tuning cost against k-shot prompting", (text, table, *((figure,) if figure else ())))


def short_prompts(table: pa.Table) -> list[str]:
    """One line per run whose prompts held fewer shots than its manifest asked for (small pool, context fit)."""
    if "n_shots" not in table.column_names or table.num_rows == 0:
        return []
    short = table.filter(pc.less(table["n_shots"], table["shots"]))
    if short.num_rows == 0:
        return []
    totals = dict(zip(*table.group_by("run").aggregate([("n_shots", "count")]).to_pydict().values()))
    grouped = short.group_by(["run", "shots"]).aggregate([("n_shots", "count"), ("n_shots", "min")]).to_pylist()
    return [
        f"`{row['run']}`: {row['n_shots_count']} of {totals[row['run']]} prompts held fewer than the {row['shots']} shots asked (as few as {row['n_shots_min']})"
        for row in sorted(grouped, key=lambda r: r["run"])
    ]


def build_document(analysis: Analysis, figures: Sequence[Figure]) -> Document:
    """The report's sections in reading order."""
    loaded = analysis.loaded
    configs = analysis.pooled.configs
    seeded = analysis.seeded
    pooled = f" in {len(configs)} configuration(s), {sum(1 for s in configs if s.seeds)} with several seeds pooled" if seeded else ""
    overview = (
        f"Source: `{analysis.source}` — {len(loaded.runs)} completed run(s){pooled}, {loaded.table.num_rows:,} predictions"
        + (f", {len(analysis.skipped)} item(s) skipped (listed below)" if analysis.skipped else "")
        + f". Metrics: {', '.join(f'`{m}`' for m in analysis.metrics)}"
        + (f"; figures lead with `{analysis.headline}`." if analysis.headline else ".")
    )
    sections: list[Section] = [Section("Overview", (overview,))]
    if analysis.skipped:
        sections.append(Section("Skipped", ("Left out of every table; nothing was changed or deleted.", Bullets(tuple(str(s) for s in analysis.skipped)))))
    if analysis.notes:
        sections.append(Section("Not compared", (Bullets(tuple(analysis.notes)),)))
    leaked = not_held_out(loaded.runs)
    if leaked:
        intro = "Evaluated examples whose input is in the train split the run trained on or drew its shots from: their scores measure recall, not generalisation."
        sections.append(Section("Not held out", (intro, Bullets(tuple(leaked)))))
    short = short_prompts(loaded.table)
    if short:
        intro = "Filed under the shots asked for, but some prompts held fewer (a dataset with too few train examples, or shots dropped to fit the context):"
        sections.append(Section("Fewer shots than asked", (intro, Bullets(tuple(short)))))
    if analysis.pooled.notes:
        sections.append(Section("Not pooled", ("Runs that differ only in seeds but are kept apart:", Bullets(tuple(analysis.pooled.notes)))))
    placed = {f.name: f for f in figures}
    sections.append(results_section(analysis))
    choice = choice_section(analysis, placed.pop("pareto_cost", None))
    if choice:
        sections.append(choice)
    sections += _model_sections(configs, analysis.metrics, seeded)
    seeds = _seeds_section(configs, analysis.metrics)
    if seeds:
        sections.append(seeds)
    if analysis.headline:
        for kind, title in (("format", "Per answer format"), ("dataset", "Per dataset")):
            section = _slice_section(configs, analysis.pooled.slices, kind, analysis.headline, title)
            if section:
                sections.append(section)
    breakeven = placed.pop("breakeven", None)
    curves = placed.pop("loss_curves", None)
    for section in (_speed_up_section(analysis), _payback_section(analysis, breakeven), training_section(analysis, curves)):
        if section:
            sections.append(section)
    if placed:
        blocks: list[Block] = list(placed.values())
        sections.append(Section("Figures", tuple(blocks)))
    sections.append(Section("How the numbers are computed", (DEFINITIONS, COST_DEFINITION)))
    return Document("qabench report", tuple(sections))

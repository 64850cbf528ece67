"""Rich tables on stdout: the one-screen summary of a report, and a paired comparison."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from rich.console import Console
from rich.table import Table

from analysis.aggregate import Summary
from analysis.seeds import SEED_FIELDS, config_id
from analysis.tables import estimate_of, number

if TYPE_CHECKING:
    from analysis.compare import Comparison, SeedComparison


def _console() -> Console:
    # Wide enough off a terminal (CI logs) that the tables are not squeezed into wrapped cells.
    return Console(highlight=False, width=None if Console().is_terminal else 160)


def print_summary(configs: Sequence[Summary], headline: str | None) -> None:
    """One line per configuration (a run, or a run's seeds pooled): identity, n, headline metric
    with CI (± sd across seeds), speed and memory."""
    seeded = any(s.seeds for s in configs)
    table = Table(title="qabench report", title_justify="left")
    columns = [("model", "left"), ("method", "left"), ("shots", "right"), ("decoding", "left"), *([("seeds", "right")] if seeded else []), ("n", "right"),
               (f"{headline or 'metric'} [95% CI]", "right"), ("gen tok/s", "right"), ("gen peak GiB", "right"), ("run", "left")]
    for header, justify in columns:
        table.add_column(header, justify=justify)  # type: ignore[arg-type]
    for s in configs:
        quality = s.quality[headline] if headline else None
        run = f"config {config_id(s.run)} ({s.n_seeds} runs)" if s.seeds else f"{s.run.name}/{s.run.digest}"
        table.add_row(
            s.run.model, s.run.method, str(s.run.shots), s.run.decoding, *([str(s.n_seeds)] if seeded else []), number(s.n),
            estimate_of(quality) if quality else "—",
            number(s.speed["generated_tokens_per_second"]), number(s.speed["generation_peak_memory_gib"]), run,
        )
    _console().print(table)


def _p(value: float | None, resamples: int | None = None) -> str:
    if value is None:
        return "—"
    if value == 0 and resamples:
        # No resample fell on the far side of zero: the bootstrap only bounds p below 1/resamples.
        return f"<{1 / resamples:g}"
    return f"{value:.3f}" if value >= 0.001 else f"{value:.1e}"


def _value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:39] + "…"


def differences_line(differing: Sequence[tuple[str, Any, Any]], limit: int = 8) -> str:
    """`field (A vs B), …` for the first `limit` differing fields, and how many more."""
    shown = ", ".join(f"{name} ({_value(x)} vs {_value(y)})" for name, x, y in differing[:limit])
    return shown + (f" and {len(differing) - limit} more" if len(differing) > limit else "")


def print_comparison(comparison: Comparison) -> None:
    """What differs, per-metric paired differences, then the McNemar test on correctness."""
    console = _console()
    a, b = comparison.a, comparison.b
    console.print(f"A = {a.name}/{a.digest} ({a.model}, {a.label})\nB = {b.name}/{b.digest} ({b.model}, {b.label})")
    if comparison.seed_twins:
        console.print(
            f"A and B are seed twins — one configuration, differing only in {differences_line(comparison.differing)}: "
            "their difference is seed-to-seed variation, not an effect of the configuration"
        )
    elif comparison.differing:
        console.print(f"A and B differ in {differences_line(comparison.differing)}")
        if any(name in SEED_FIELDS for name, _, _ in comparison.differing):
            console.print("They differ in seed too: `--seeds` compares their configurations seed by seed, where the storage holds more seeds")
    else:
        console.print("A and B have the same manifest apart from names and storage (the same evaluation stored twice)")
    console.print(f"{comparison.shared:,} shared examples (A has {comparison.n_a:,}, B has {comparison.n_b:,})")
    table = Table(title="paired bootstrap of mean(A − B)", title_justify="left")
    for header in ("metric", "n", "A", "B", "A − B", "95% CI", "p"):
        table.add_column(header, justify="left" if header == "metric" else "right")
    for name, d in comparison.differences.items():
        ci = "—" if d.low is None else f"[{d.low:+.3f}, {d.high:+.3f}]"
        diff = "—" if d.difference is None else f"{d.difference:+.3f}"
        table.add_row(name, number(d.n), number(d.mean_a), number(d.mean_b), diff, ci, _p(d.p_value, comparison.resamples))
    console.print(table)
    m = comparison.mcnemar
    console.print(
        f"McNemar exact test, correct = {comparison.correct_rule}: both {m.both:,}, only A {m.only_a:,}, "
        f"only B {m.only_b:,}, neither {m.neither:,}; p = {_p(m.p_value)}"
    )


def print_seed_comparison(comparison: SeedComparison) -> None:
    """Paired differences per seed and over the seeds, the spread of the per-seed differences,
    McNemar per seed, and the runs left unpaired."""
    console = _console()
    a, b = comparison.a, comparison.b
    console.print(f"A = configuration of {a.name}/{a.digest} ({a.model}, {a.label})\nB = configuration of {b.name}/{b.digest} ({b.model}, {b.label})")
    if comparison.differing:
        console.print(f"The configurations differ in {differences_line(comparison.differing)}")
    on = " ".join(comparison.paired_on) or "no seed field (one run each)"
    console.print(f"{len(comparison.pairs)} seed pair(s), paired on {on}; {comparison.shared:,} examples shared by every pair")
    table = Table(title="paired bootstrap of mean(A − B), per seed and over all seeds", title_justify="left")
    for header in ("metric", "seed", "n", "A", "B", "A − B", "95% CI", "p"):
        table.add_column(header, justify="left" if header in ("metric", "seed") else "right")
    for metric, over in comparison.over_seeds.items():
        rows = [(pair.seed, pair.differences[metric]) for pair in comparison.pairs] + [("all seeds", over)]
        for seed, d in rows:
            ci = "—" if d.low is None else f"[{d.low:+.3f}, {d.high:+.3f}]"
            diff = "—" if d.difference is None else f"{d.difference:+.3f}"
            table.add_row(metric, seed, number(d.n), number(d.mean_a), number(d.mean_b), diff, ci, _p(d.p_value, comparison.resamples))
    console.print(table)
    spread = Table(title="per-seed differences across seeds: mean ± sd, 95% t-interval", title_justify="left")
    for header in ("metric", "seeds", "mean A − B", "sd", "95% t-interval"):
        spread.add_column(header, justify="left" if header == "metric" else "right")
    for metric, e in comparison.across_seeds.items():
        interval = "—" if e.low is None else f"[{e.low:+.3f}, {e.high:+.3f}]"
        spread.add_row(metric, str(e.n), "—" if e.mean is None else f"{e.mean:+.3f}", number(e.sd), interval)
    console.print(spread)
    for pair in comparison.pairs:
        m = pair.mcnemar
        console.print(
            f"McNemar, correct = {comparison.correct_rule}, {pair.seed}: both {m.both:,}, only A {m.only_a:,}, "
            f"only B {m.only_b:,}, neither {m.neither:,}; p = {_p(m.p_value)}"
        )
    for note in comparison.notes:
        console.print(f"note: {note}")

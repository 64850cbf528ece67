"""Rich tables on stdout: the one-screen summary of a report, and a paired comparison."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from rich.console import Console
from rich.table import Table

from analysis.aggregate import Summary
from analysis.tables import estimate, number

if TYPE_CHECKING:
    from analysis.compare import Comparison


def _console() -> Console:
    # Wide enough off a terminal (CI logs) that the tables are not squeezed into wrapped cells.
    return Console(highlight=False, width=None if Console().is_terminal else 160)


def print_summary(runs: Sequence[Summary], headline: str | None) -> None:
    """One line per run: identity, n, headline metric with CI, speed and memory."""
    table = Table(title="qabench report", title_justify="left")
    for header, justify in (("model", "left"), ("method", "left"), ("shots", "right"), ("decoding", "left"), ("n", "right"),
                            (f"{headline or 'metric'} [95% CI]", "right"), ("gen tok/s", "right"), ("gen peak GiB", "right"), ("run", "left")):
        table.add_column(header, justify=justify)  # type: ignore[arg-type]
    for s in runs:
        quality = s.quality[headline] if headline else None
        table.add_row(
            s.run.model, s.run.method, str(s.run.shots), s.run.decoding, number(s.n),
            estimate(quality.mean, quality.low, quality.high) if quality else "—",
            number(s.speed["generated_tokens_per_second"]), number(s.speed["generation_peak_memory_gib"]), f"{s.run.name}/{s.run.digest}",
        )
    _console().print(table)


def _p(value: float | None, resamples: int | None = None) -> str:
    if value is None:
        return "—"
    if value == 0 and resamples:
        # No resample fell on the far side of zero: the bootstrap only bounds p below 1/resamples.
        return f"<{1 / resamples:g}"
    return f"{value:.3f}" if value >= 0.001 else f"{value:.1e}"


def print_comparison(comparison: Comparison) -> None:
    """Per-metric paired differences, then the McNemar test on correctness."""
    console = _console()
    a, b = comparison.a, comparison.b
    console.print(f"A = {a.name}/{a.digest} ({a.model}, {a.label})\nB = {b.name}/{b.digest} ({b.model}, {b.label})")
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

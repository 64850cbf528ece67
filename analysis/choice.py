"""Which configuration to pick: per answer format and overall, the configurations on the
accuracy-versus-cost Pareto front (analysis/cost.py), said in plain words.

A configuration is on the front when no other one is at least as accurate for at most the same
cost and strictly better in one of the two. Everything off the front is beaten on both by
something on it, so the front is the whole menu; the sentences read it from the most accurate
end, and name the cheapest option whose mean lies inside the most accurate one's 95% interval,
the answer to "can I pay less for (statistically) the same accuracy?".
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import pyarrow as pa

from analysis.aggregate import Summary
from analysis.cost import Cost, cost_of
from analysis.labels import full_label
from analysis.load import RunInfo
from analysis.stats import Estimate
from analysis.tables import number
from runner.data.example import FORMATS

OVERALL = "overall"
"""The scope of every question together."""

SCOPE_NAMES = {OVERALL: "all questions", "yes_no": "yes/no", "multiple_choice": "multiple choice", "extractive": "extractive", "abstractive": "abstractive"}
"""How the sentences name each scope."""


@dataclass(frozen=True)
class Option:
    """One configuration within a scope: its accuracy there and its cost there."""

    config: Summary
    """The configuration (its run, training and seeds)."""
    accuracy: Estimate
    """The headline metric over the scope's questions."""
    cost: Cost


@dataclass(frozen=True)
class Scope:
    """Every question, or the questions of one answer format."""

    name: str
    """OVERALL or an answer format."""
    options: tuple[Option, ...]
    """Configurations with both an accuracy and a cost here, in report order."""
    front: tuple[Option, ...]
    """The Pareto front, cheapest (and least accurate) first."""
    unpriced: tuple[Summary, ...]
    """Configurations with an accuracy here but no recorded cost (left off the front)."""
    elsewhere: tuple[Summary, ...] = ()
    """Configurations that answered other questions here (another eval set or sample): an
    accuracy over other questions does not compare, so they are left out of this scope."""


def cost_front(options: Sequence[Option]) -> list[Option]:
    """Options no other beats on both accuracy (higher) and cost (lower), by rising cost.

    Walking by rising cost (ties: most accurate first), an option joins the front only when it is
    more accurate than everything cheaper or as cheap; equal accuracy at a higher cost never does.
    """
    front: list[Option] = []
    for option in sorted(options, key=lambda o: (o.cost.gpu_hours, -o.accuracy.mean)):  # type: ignore[operator]
        if not front or option.accuracy.mean > front[-1].accuracy.mean:  # type: ignore[operator]
            front.append(option)
    return front


def question_sets(table: pa.Table, runs: Sequence[RunInfo]) -> dict[tuple[int, str], str]:
    """(id(run), scope) → a fingerprint of the questions the run answered in that scope: its
    example ids with the recorded hashes of the data files they came from."""
    keys: dict[tuple[int, str], str] = {}
    for run in runs:
        rows = table.slice(run.start, run.stop - run.start)
        examples: dict[str, list[str]] = {OVERALL: []}
        datasets: dict[str, set[str]] = {OVERALL: set()}
        for example, fmt, dataset in zip(rows.column("id").to_pylist(), rows.column("format").to_pylist(), rows.column("dataset").to_pylist()):
            for scope in (OVERALL, fmt):
                examples.setdefault(scope, []).append(example)
                datasets.setdefault(scope, set()).add(dataset)
        for scope, ids in examples.items():
            # Only the files the scope's questions came from: a run of one dataset and a run of four
            # answer that dataset's questions alike.
            data = [f"{name} {digest}" for name, digest in run.eval_set.data_sha256 if name.split("/", 1)[0] in datasets[scope]]
            keys[(id(run), scope)] = hashlib.sha256("\n".join(sorted(ids) + [""] + data).encode()).hexdigest()
    return keys


def _scope(name: str, pairs: Sequence[tuple[Summary, Summary]], headline: str, questions: dict[tuple[int, str], str]) -> Scope | None:
    """`pairs` are (configuration, the summary of its questions in this scope). Only the
    configurations that answered the scope's most common question set are compared."""
    sets = Counter(questions.get((id(config.run), name)) for config, _ in pairs)
    common = max(sets, key=lambda key: sets[key]) if sets else None
    elsewhere = tuple(config for config, _ in pairs if questions.get((id(config.run), name)) != common)
    apart = {id(config) for config in elsewhere}
    options, unpriced = [], []
    for config, part in pairs:
        if id(config) in apart:
            continue
        accuracy = part.quality.get(headline)
        if accuracy is None or accuracy.mean is None:
            continue
        cost = cost_of(part, config)
        if cost.gpu_hours is None:
            unpriced.append(config)
        else:
            options.append(Option(config, accuracy, cost))
    if not options and not unpriced:
        return None
    return Scope(name, tuple(options), tuple(cost_front(options)), tuple(unpriced), elsewhere)


def scopes(configs: Sequence[Summary], slices: Sequence[Summary], headline: str, table: pa.Table) -> list[Scope]:
    """Overall, then each answer format the runs hold (in FORMATS order); `table` holds the
    runs' rows (which questions each answered)."""
    questions = question_sets(table, [c.run for c in configs])
    found = [_scope(OVERALL, [(c, c) for c in configs], headline, questions)]
    by_run = {(id(s.run), s.slice_value): s for s in slices if s.slice_kind == "format"}
    present = {s.slice_value for s in slices if s.slice_kind == "format"}
    for fmt in [f for f in FORMATS if f in present] + sorted(present - set(FORMATS)):
        pairs = [(c, by_run[(id(c.run), fmt)]) for c in configs if (id(c.run), fmt) in by_run]
        found.append(_scope(fmt, pairs, headline, questions))
    return [s for s in found if s is not None]


def hours(value: float | None, price: float | None) -> str:
    """GPU-hours for people, with dollars when a price is given."""
    if value is None:
        return "—"
    text = f"{number(value)} GPU-hours"
    return text + (f" (${value * price:,.2f})" if price is not None else "")


def _share(part: float, whole: float) -> str:
    ratio = part / whole if whole else 1.0
    if ratio < 0.01:
        return "under 1% of the cost"
    if 0.45 <= ratio <= 0.55:
        return "about half the cost"
    return f"{ratio:.0%} of the cost"


def advice(scope: Scope, numbers: dict[int, int], labels: dict[int, str], price: float | None) -> str:
    """The scope's front in one or two plain sentences, configurations named by # and label."""

    def name(option: Option) -> str:
        return f"#{numbers.get(id(option.config.run), '?')} {full_label(option.config, labels)}"

    def accuracy(option: Option) -> str:
        return f"{option.accuracy.mean:.3f}"

    title = SCOPE_NAMES.get(scope.name, scope.name)
    lead = f"For {title} ({len(scope.options)} configuration{'s' if len(scope.options) != 1 else ''} with a cost)"
    unpriced = f" {len(scope.unpriced)} more recorded no cost and are left out." if scope.unpriced else ""
    if scope.elsewhere:
        listed = ", ".join(f"#{numbers.get(id(c.run), '?')}" for c in scope.elsewhere)
        unpriced += f" Not compared here, having answered other questions: {listed}."
    if not scope.front:
        return f"For {title}, no configuration recorded a cost (training seconds or batch timings), so none can be recommended.{unpriced}"
    top, cheapest = scope.front[-1], scope.front[0]
    if top is cheapest:
        beaten = len(scope.options) - 1
        rest = f" It beats the other {beaten} on both." if beaten else ""
        return f"{lead}: pick {name(top)}: it is the most accurate ({accuracy(top)}) and the cheapest ({hours(top.cost.gpu_hours, price)}).{rest}{unpriced}"
    parts = [f"{lead}: pick {name(top)} ({accuracy(top)}) if you can spend {hours(top.cost.gpu_hours, price)}"]
    close = None
    if top.accuracy.low is not None:
        close = next((o for o in scope.front[:-1] if o.accuracy.mean >= top.accuracy.low), None)  # type: ignore[operator]
    if close is not None:
        parts.append(
            f"{name(close)} ({accuracy(close)}) is as accurate within the 95% interval of #{numbers.get(id(top.config.run), '?')}'s score, for "
            f"{_share(close.cost.gpu_hours, top.cost.gpu_hours)} ({hours(close.cost.gpu_hours, price)})"  # type: ignore[arg-type]
        )
    between = [o for o in scope.front[1:-1] if o is not close]
    if between:
        listed = ", ".join(f"{name(o)} ({accuracy(o)}, {hours(o.cost.gpu_hours, price)})" for o in reversed(between))
        parts.append(f"for less, {listed}")
    if cheapest is not close:
        parts.append(f"the cheapest is {name(cheapest)} ({accuracy(cheapest)}, {hours(cheapest.cost.gpu_hours, price)})")
    beaten = len(scope.options) - len(scope.front)
    tail = ""
    if beaten:
        tail = f" The other {beaten} are" if beaten > 1 else " The other one is"
        tail += " beaten on both accuracy and cost by one of these."
    return "; ".join(parts) + "." + tail + unpriced

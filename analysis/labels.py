"""What the report calls each configuration: its label, and its number (#), which the results
table, the figures and the "which to pick" sentences share, so a point in a crowded figure can
be looked up in the table instead of carrying a label of its own."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

from analysis.aggregate import Summary


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


def config_numbers(configs: Sequence[Summary]) -> dict[int, int]:
    """id(run) → the 1-based number of the configuration holding it, in report order.

    Keyed by run, not summary: a configuration's slices and the pairs built from its runs reach
    the same number through their `run`; every seed of a pooled configuration shares it.
    """
    numbers = {}
    for number, summary in enumerate(configs, 1):
        for member in summary.seeds or (summary,):
            numbers[id(member.run)] = number
    return numbers


def full_label(summary: Summary, labels: dict[int, str]) -> str:
    """model · configuration label, for places that mix models."""
    return f"{summary.run.model} · {labels.get(id(summary), summary.run.label)}"

"""Scorers: one module each, registering a `Scorer` under the name used in manifests and tables.

Each scorer declares its direction and aggregation where it is defined; a missing score is
`None`, never a sentinel value, and is left out of aggregates (n counts only scored examples).
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import fmean
from typing import Callable, Iterable, Literal, Sequence

from runner.registry import Registry


@dataclass(frozen=True)
class Scorer:
    """A per-example metric and how per-example values combine."""

    score: Callable[[str, Sequence[str]], float | None]
    """(prediction, references) -> value, or None when undefined for this example."""
    higher_is_better: bool
    aggregation: Literal["mean"] = "mean"


SCORERS: Registry[Scorer] = Registry(__name__, "scorer")


def register(name: str, scorer: Scorer) -> Scorer:
    """Register a scorer under its name."""
    return SCORERS.register(name, scorer)


def aggregate(scorer: Scorer, values: Iterable[float | None]) -> float | None:
    """Combine per-example values, skipping missing ones; None when nothing was scored."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    if scorer.aggregation == "mean":
        return fmean(present)
    raise ValueError(f"unknown aggregation {scorer.aggregation!r}")

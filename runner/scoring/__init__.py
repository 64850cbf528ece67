"""Scorers: one module each, registering a `Scorer` under the name used in manifests and tables.

Each scorer declares its direction and aggregation where it is defined; a missing score is
`None`, never a sentinel value, and is left out of aggregates (n counts only scored examples).
A scorer sees one `Scored` record per example, so metrics that need more than the text (the
options of a multiple-choice question, the dataset's UnifiedQA rule) share one interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import fmean
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

from runner.registry import Registry


@dataclass(frozen=True)
class Scored:
    """One prediction with everything a scorer may judge it against."""

    prediction: str
    """The model's answer, already cut at its stop string."""
    references: tuple[str, ...]
    """Reference answers; a text metric takes the best score over them."""
    options: tuple[str, ...] = ()
    """Multiple-choice option texts in letter order (a, b, c, ...); () when there are none."""
    format: str = ""
    """Answer format, one of runner.data.example.FORMATS; "" when unknown."""
    dataset: str = ""
    """Dataset name, as in Example.dataset (a UnifiedQA name or a JSONL dataset); "" when unknown."""
    choices: tuple[str, ...] = ()
    """The answers the log-likelihood protocol ranked (options, or yes and no); () for generated answers."""
    choice_logprobs: tuple[float, ...] = ()
    """Summed log-probability of each choice as a continuation of the prompt."""

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Scored:
        """Build from a prediction-shard row; options, format and dataset may be absent."""
        return cls(
            prediction=row["prediction"],
            references=tuple(row["references"]),
            # A shard stores "no options" as an empty list; older rows may have no column at all.
            options=tuple(row.get("options") or ()),
            format=row.get("format") or "",
            dataset=row.get("dataset") or "",
            choices=tuple(row.get("choices") or ()),
            choice_logprobs=tuple(row.get("choice_logprobs") or ()),
        )


@dataclass(frozen=True)
class Scorer:
    """A per-example metric and how per-example values combine."""

    score: Callable[[Scored], float | None]
    """Scored example -> value, or None when the metric is undefined for this example."""
    higher_is_better: bool
    """Direction, for tables and comparisons: True when a larger value is a better answer."""
    aggregation: Literal["mean"] = "mean"
    """How `aggregate` combines the values that are not None."""


TextMetric = Callable[[str, Sequence[str]], float | None]


def on_text(metric: TextMetric) -> Callable[[Scored], float | None]:
    """Adapt a (prediction, references) metric to the `Scored` interface."""

    def score(item: Scored) -> float | None:
        return metric(item.prediction, item.references)

    score.__name__ = metric.__name__
    score.__doc__ = metric.__doc__
    return score


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

"""Exact match after normalisation, max over references."""

from __future__ import annotations

from typing import Sequence

from runner.scoring import Scorer, on_text, register
from runner.scoring._normalize import normalize_answer


def exact_match(prediction: str, references: Sequence[str]) -> float | None:
    """1.0 if the normalised prediction equals any normalised reference, else 0.0."""
    if not references:
        return None
    predicted = normalize_answer(prediction)
    return float(any(predicted == normalize_answer(ref) for ref in references))


register("exact_match", Scorer(score=on_text(exact_match), higher_is_better=True, aggregation="mean"))

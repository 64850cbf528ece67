"""SQuAD token F1: harmonic mean of token precision and recall, max over references."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

from runner.scoring import Scorer, register
from runner.scoring._normalize import answer_tokens


def _token_f1(predicted: list[str], reference: list[str]) -> float:
    # Two empty answers agree (SQuAD 2 "no answer"); one empty side scores 0.
    if not predicted or not reference:
        return float(predicted == reference)
    common = sum((Counter(predicted) & Counter(reference)).values())
    if common == 0:
        return 0.0
    precision = common / len(predicted)
    recall = common / len(reference)
    return 2 * precision * recall / (precision + recall)


def f1(prediction: str, references: Sequence[str]) -> float | None:
    """Best token F1 of the prediction against any reference."""
    if not references:
        return None
    predicted = answer_tokens(prediction)
    return max(_token_f1(predicted, answer_tokens(ref)) for ref in references)


register("f1", Scorer(score=f1, higher_is_better=True))

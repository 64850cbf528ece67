"""SQuAD token F1: harmonic mean of token precision and recall, max over references.

Equal to the SQuAD v1.1 script whenever the prediction has a token after normalisation. When
both sides normalise to nothing this follows SQuAD v2.0's rule (1.0, the answers agree) where
v1.1 would say 0.0; SQuAD 2 and UnifiedQA's squad2 script score "no answer" that way.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

from runner.scoring import Scorer, on_text, register
from runner.scoring._normalize import answer_tokens


def token_f1(predicted: Sequence[str], reference: Sequence[str]) -> float:
    """F1 of two token lists, counting repeated tokens as often as both sides have them."""
    if not predicted or not reference:
        return float(len(predicted) == len(reference))
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
    return max(token_f1(predicted, answer_tokens(ref)) for ref in references)


register("f1", Scorer(score=on_text(f1), higher_is_better=True, aggregation="mean"))

"""Token Jaccard similarity |A∩B| / |A∪B| over normalised token sets, max over references.

Defined for every pair: two empty answers agree (1.0), one empty side scores 0.0. Partial
overlap earns partial credit: "big red house" vs "big blue house" is 2/4 = 0.5, never 0.
"""

from __future__ import annotations

from typing import Sequence

from runner.scoring import Scorer, on_text, register
from runner.scoring._normalize import answer_tokens


def token_jaccard(predicted: set[str], reference: set[str]) -> float:
    """Jaccard index of two token sets; 1.0 when both are empty."""
    union = predicted | reference
    if not union:
        return 1.0
    return len(predicted & reference) / len(union)


def jaccard(prediction: str, references: Sequence[str]) -> float | None:
    """Best token-set Jaccard of the prediction against any reference."""
    if not references:
        return None
    predicted = set(answer_tokens(prediction))
    return max(token_jaccard(predicted, set(answer_tokens(ref))) for ref in references)


register("jaccard", Scorer(score=on_text(jaccard), higher_is_better=True, aggregation="mean"))

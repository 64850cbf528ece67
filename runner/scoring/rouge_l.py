"""ROUGE-L F-measure from the `rouge_score` package, max over references.

The raw texts go to rouge_score, not SQuAD-normalised ones: its own tokenizer already lowercases
and splits on every non-alphanumeric character, which is the tokenisation published ROUGE-L
numbers use. SQuAD normalisation would also drop articles (which ROUGE counts) and glue
hyphenated words together ("well-known" → "wellknown" instead of "well known").

Porter stemming is on because UnifiedQA's NarrativeQA script scores ROUGE-L with stemming
(py-rouge, `stemming=True`). Unlike that script, values are not rounded to two decimals and
answers are not cut at 100 words. rouge_score scores an empty side as 0.0, even against an
empty reference.
"""

from __future__ import annotations

from functools import cache
from typing import Any, Sequence

from runner.scoring import Scorer, on_text, register


@cache
def _rouge() -> Any:
    # Imported on first use: rouge_score pulls in nltk, which `runner validate` never needs.
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, references: Sequence[str]) -> float | None:
    """Best ROUGE-L F-measure of the prediction against any reference."""
    if not references:
        return None
    rouge = _rouge()
    # RougeScorer.score takes (target, prediction).
    return max(rouge.score(ref, prediction)["rougeL"].fmeasure for ref in references)


register("rouge_l", Scorer(score=on_text(rouge_l), higher_is_better=True, aggregation="mean"))

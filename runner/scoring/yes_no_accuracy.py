"""Yes/no accuracy: read the answer's first word as yes, no or unknown, then compare.

The rule: the first token of the SQuAD-normalised answer decides — "yes" or "true" is yes,
"no" or "false" is no, anything else (including an empty answer) is unknown and scores 0.0.
So "Yes, because the river flooded" is yes, "Not really" is unknown, and "No idea" is no (the
rule reads words, not meaning). Only examples of the
yes_no format are scored; every other example gets None.
"""

from __future__ import annotations

from typing import Literal

from runner.scoring import Scored, Scorer, register
from runner.scoring._normalize import answer_tokens

YesNo = Literal["yes", "no", "unknown"]

_WORDS: dict[str, YesNo] = {"yes": "yes", "true": "yes", "no": "no", "false": "no"}


def yes_no_label(text: str) -> YesNo:
    """"yes", "no" or "unknown", from the first normalised token of the text."""
    tokens = answer_tokens(text)
    return _WORDS.get(tokens[0], "unknown") if tokens else "unknown"


def yes_no_accuracy(item: Scored) -> float | None:
    """1.0 if the prediction's label equals a reference's label; None outside the yes_no format."""
    if item.format != "yes_no":
        return None
    gold = {yes_no_label(ref) for ref in item.references} - {"unknown"}
    if not gold:
        return None  # references that are neither yes nor no cannot judge the answer
    return float(yes_no_label(item.prediction) in gold)


register("yes_no_accuracy", Scorer(score=yes_no_accuracy, higher_is_better=True, aggregation="mean"))

"""Multiple-choice accuracy: map the free-text answer to an option, then compare options.

UnifiedQA's models write an option's text, not its letter, and UnifiedQA scores them by picking
the option most similar to the generated text. `match_option` does the same, closest spelling
first:

1. an option equal to the prediction up to case and whitespace;
2. an option equal to it after SQuAD normalisation (punctuation, articles);
3. a prediction that is only a letter — "b", "(b)", "B)", "b." — names that option;
4. otherwise the option with the highest SQuAD token F1 against the prediction.

F1 replaces UnifiedQA's |shared token set| / max(lengths): both reward overlap and punish
length, and F1 is the overlap measure this package already defines and tests. Every tie goes
to the lowest option index. A prediction sharing no token with any option matches nothing
(UnifiedQA's argmax would silently pick option a), so gibberish is never right by luck.
"""

from __future__ import annotations

import re
from typing import Sequence

from runner.scoring import Scored, Scorer, register
from runner.scoring._normalize import normalize_answer
from runner.scoring.f1 import token_f1

# The whole prediction is one letter, optionally in parentheses and followed by "." or ":".
_LETTER = re.compile(r"\(?([a-z])\)?[.:]?", re.IGNORECASE)


def _spelling(text: str) -> str:
    return " ".join(text.lower().split())


def _first(candidates: list[str], wanted: str) -> int | None:
    return candidates.index(wanted) if wanted in candidates else None


def match_option(prediction: str, options: Sequence[str]) -> int | None:
    """Index of the option the prediction names, or None when it names none (or no options)."""
    if not options:
        return None
    spelled = _spelling(prediction)
    if spelled and (index := _first([_spelling(o) for o in options], spelled)) is not None:
        return index
    predicted = normalize_answer(prediction)
    normalised = [normalize_answer(o) for o in options]
    # An empty prediction must not "equal" an option that normalises to nothing, such as "the".
    if predicted and (index := _first(normalised, predicted)) is not None:
        return index
    letter = _LETTER.fullmatch(prediction.strip())
    if letter and (index := ord(letter.group(1).lower()) - ord("a")) < len(options):
        return index
    tokens = predicted.split()
    if not tokens:
        return None
    overlaps = [token_f1(tokens, option.split()) for option in normalised]
    best = max(overlaps)
    return overlaps.index(best) if best > 0 else None


def option_accuracy(item: Scored) -> float | None:
    """1.0 if the prediction names a reference's option, 0.0 if not; None without options."""
    if not item.options or not item.references:
        return None
    # References are option texts; mapping them the same way tolerates case and spacing.
    correct = {match_option(ref, item.options) for ref in item.references} - {None}
    if not correct:
        return None  # no reference names an option: the example cannot be judged
    return float(match_option(item.prediction, item.options) in correct)


register("option_accuracy", Scorer(score=option_accuracy, higher_is_better=True, aggregation="mean"))

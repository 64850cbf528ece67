"""Shared by `acc` and `acc_norm`: which ranked choice is correct, and which one the model ranked first."""

from __future__ import annotations

from typing import Sequence

from runner.scoring import Scored
from runner.scoring._normalize import normalize_answer
from runner.scoring.yes_no_accuracy import yes_no_label


def gold_choice(item: Scored) -> int | None:
    """Index of the choice a reference names: the same text up to case and spacing, else after
    SQuAD normalisation; for yes/no, the choice with the reference's yes/no label."""
    choices = item.choices
    if item.format == "yes_no":
        labels = {yes_no_label(ref) for ref in item.references} - {"unknown"}
        found = [i for i, choice in enumerate(choices) if yes_no_label(choice) in labels]
        return found[0] if found else None
    for canonical in (lambda text: " ".join(text.lower().split()), normalize_answer):
        wanted = {canonical(ref) for ref in item.references}
        found = [i for i, choice in enumerate(choices) if canonical(choice) in wanted]
        if found:
            return found[0]
    return None


def first_ranked(scores: Sequence[float]) -> int:
    """numpy.argmax: the highest score, ties to the lowest index."""
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def ranked_correct(item: Scored, normalise_by_length: bool) -> float | None:
    """1.0 when the top-ranked choice is the gold one; None without ranked choices or a gold choice."""
    if not item.choice_logprobs or len(item.choice_logprobs) != len(item.choices):
        return None
    gold = gold_choice(item)
    if gold is None:
        return None
    scores = item.choice_logprobs
    if normalise_by_length:
        scores = [score / len(choice) for score, choice in zip(scores, item.choices)]
    return float(first_ranked(scores) == gold)

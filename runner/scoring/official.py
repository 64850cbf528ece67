"""Each dataset's official UnifiedQA metric, so one column compares across datasets.

`OFFICIAL_METRICS` is the one place that says which metric a dataset is judged by; a synthetic
dataset uses the metric of its answer format. Examples of datasets missing from the table get
None.

SQuAD 2 follows UnifiedQA's evaluate_squad2.py: a prediction containing "no answer" (UnifiedQA
writes unanswerable targets as "<No Answer>") becomes the empty answer, and so do all references
when any of them says "no answer"; then token F1, under which an empty prediction against an
empty reference scores 1.0. The check runs on the normalised text, which also catches
"No answer." and "NO  ANSWER" as well as everything the script's lowercase substring test does.
"""

from __future__ import annotations

from typing import Callable

from runner.data.example import SYNTHETIC_DATASET_FORMATS
from runner.scoring import Scored, Scorer, on_text, register
from runner.scoring._normalize import normalize_answer
from runner.scoring.f1 import f1
from runner.scoring.option_accuracy import option_accuracy
from runner.scoring.rouge_l import rouge_l
from runner.scoring.yes_no_accuracy import yes_no_accuracy

_NO_ANSWER = "no answer"


def _says_no_answer(text: str) -> bool:
    return _NO_ANSWER in normalize_answer(text)


def squad2_f1(item: Scored) -> float | None:
    """Token F1 where "no answer" in the prediction or a reference means the empty answer."""
    references = [""] if any(_says_no_answer(ref) for ref in item.references) else item.references
    prediction = "" if _says_no_answer(item.prediction) else item.prediction
    return f1(prediction, references)


_f1 = on_text(f1)
_rouge_l = on_text(rouge_l)

FORMAT_METRICS: dict[str, Callable[[Scored], float | None]] = {
    "yes_no": yes_no_accuracy,
    "multiple_choice": option_accuracy,
    "extractive": _f1,
    "abstractive": _rouge_l,
}
"""The metric of each answer format, used for the synthetic datasets."""

OFFICIAL_METRICS: dict[str, Callable[[Scored], float | None]] = {
    "squad1_1": _f1,
    "squad2": squad2_f1,
    "narrativeqa": _rouge_l,
    "boolq": yes_no_accuracy,
    "arc_easy": option_accuracy,
    "arc_hard": option_accuracy,
    "openbookqa": option_accuracy,
    "race_string": option_accuracy,
    "mctest_corrected_the_separator": option_accuracy,
    "ai2_science_elementary": option_accuracy,
    "ai2_science_middle": option_accuracy,
    **{dataset: FORMAT_METRICS[fmt] for dataset, fmt in SYNTHETIC_DATASET_FORMATS.items()},
}
"""Dataset name → the per-example metric UnifiedQA reports for it."""


def official(item: Scored) -> float | None:
    """The example's score under its dataset's official metric; None for unknown datasets."""
    metric = OFFICIAL_METRICS.get(item.dataset)
    return metric(item) if metric else None


register("official", Scorer(score=official, higher_is_better=True, aggregation="mean"))

"""The Example record every reader produces, the answer formats, and the dataset → format table."""

from __future__ import annotations

from dataclasses import dataclass

from runner.errors import DataError, Problem

FORMATS = ("yes_no", "multiple_choice", "extractive", "abstractive")
"""Every answer format, the one list: decoding budgets, scorers and readers all refer to it."""

# The 11 UnifiedQA datasets this suite uses, as named in the official bucket.
OFFICIAL_DATASET_FORMATS: dict[str, str] = {
    "narrativeqa": "abstractive",
    "ai2_science_middle": "multiple_choice",
    "ai2_science_elementary": "multiple_choice",
    "arc_hard": "multiple_choice",
    "arc_easy": "multiple_choice",
    "mctest_corrected_the_separator": "multiple_choice",
    "race_string": "multiple_choice",
    "openbookqa": "multiple_choice",
    "squad1_1": "extractive",
    "squad2": "extractive",
    "boolq": "yes_no",
}

# Generated locally by runner.data.synthetic; never downloaded.
SYNTHETIC_DATASET_FORMATS: dict[str, str] = {f"synthetic_{fmt}": fmt for fmt in FORMATS}

DATASET_FORMATS: dict[str, str] = {**OFFICIAL_DATASET_FORMATS, **SYNTHETIC_DATASET_FORMATS}


@dataclass(frozen=True)
class Example:
    """One question with its reference answers, as a reader (runner.readers) parsed it."""

    id: str
    """Stable id: by default `<dataset>/<split>/<n>`, n = 0-based index in its file (TSV: after
    merging duplicate inputs); a JSONL line may give its own."""
    dataset: str
    """Dataset name: a key of DATASET_FORMATS for UnifiedQA TSV data, any safe name for JSONL."""
    split: str
    """Split name: train, dev or test."""
    format: str
    """Answer format, one of FORMATS."""
    input: str
    """The UnifiedQA input, its stripped parts joined by real newlines instead of literal `\\n`."""
    question: str
    """The first part of the input."""
    options: tuple[tuple[str, str], ...]
    """Multiple-choice options as (lowercase letter, text); () when the input has none."""
    context: str
    """The parts other than question and options, joined by newlines; "" if there are none."""
    answers: tuple[str, ...]
    """Distinct reference answers (at least one), in order of first appearance."""
    line: int
    """1-based line number of the (first) line this example came from."""


def format_of(dataset: str) -> str:
    """Return the answer format of a dataset, or raise DataError naming the known ones."""
    try:
        return DATASET_FORMATS[dataset]
    except KeyError:
        known = ", ".join(sorted(DATASET_FORMATS))
        raise DataError([Problem(f"unknown dataset {dataset!r}; known datasets: {known}")]) from None

"""The Example record every reader produces, the answer formats, and the dataset → format table."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass

from runner.errors import DataError, Problem

FORMATS = ("yes_no", "multiple_choice", "extractive", "abstractive")
"""Every answer format, the one list: decoding budgets, scorers and readers all refer to it."""

GROUPS = ("training", "science", "held_out")
"""How UnifiedQA used an official dataset: `training` = one of the paper's 8 seen datasets (ARC is
two folders, arc_easy and arc_hard); `science` = the AI2 science exam sets, also in UnifiedQA's
training mixture though not among the paper's 20; `held_out` = one of the paper's 12 unseen
datasets, never trained on. 8 + 12 = the 20 datasets of the UnifiedQA paper."""


@dataclass(frozen=True)
class OfficialDataset:
    """One dataset as published in the UnifiedQA bucket: a folder of `<split>.tsv` files."""

    title: str
    """The dataset as the UnifiedQA paper names it."""
    format: str
    """Answer format, one of FORMATS."""
    group: str
    """One of GROUPS."""
    splits: tuple[str, ...]
    """The split files the bucket holds, `<split>.tsv` each."""
    answer_splits: tuple[str, ...] = ()
    """Splits with a `<split>_ans.jsonl` beside the TSV: line i is the JSON list of every gold
    answer of TSV line i, which UnifiedQA's official scorer reads instead of the TSV's one target."""


# Sources (allenai/unifiedqa unless named): folder names and the training mixture from tasks.py
# (`union_datasets`); the held-out folders from bart/download_data.sh and evaluation/evaluate_v2.py;
# formats and file layouts from encode_datasets.py (the paper files NatQA and DROP as abstractive);
# the splits each folder holds from the data_urls of tensorflow/datasets
# tensorflow_datasets/datasets/unified_qa/unified_qa_dataset_builder.py, winogrande_xl (absent
# there) from encode_datasets.py's winogrande(), which writes train and dev only. The answer files
# are the ones evaluation/evaluate_squad11.py and evaluate_squad2.py read from their local copy of
# the bucket, t2t-data/<dataset>/dev_ans.jsonl; encode_datasets.py's read_and_parse_multiqa writes
# them beside the TSV.
_TRAIN_DEV = ("train", "dev")
_TRAIN_DEV_TEST = ("train", "dev", "test")
OFFICIAL_DATASETS: dict[str, OfficialDataset] = {
    # The training mixture, in tasks.py's order.
    "narrativeqa": OfficialDataset("NarrativeQA", "abstractive", "training", _TRAIN_DEV_TEST),
    "ai2_science_middle": OfficialDataset("AI2 Science (middle school)", "multiple_choice", "science", _TRAIN_DEV_TEST),
    "ai2_science_elementary": OfficialDataset("AI2 Science (elementary)", "multiple_choice", "science", _TRAIN_DEV_TEST),
    "arc_hard": OfficialDataset("ARC (challenge)", "multiple_choice", "training", _TRAIN_DEV_TEST),
    "arc_easy": OfficialDataset("ARC (easy)", "multiple_choice", "training", _TRAIN_DEV_TEST),
    "mctest_corrected_the_separator": OfficialDataset("MCTest", "multiple_choice", "training", _TRAIN_DEV),
    "squad1_1": OfficialDataset("SQuAD 1.1", "extractive", "training", _TRAIN_DEV, answer_splits=("dev",)),
    "squad2": OfficialDataset("SQuAD 2.0", "extractive", "training", _TRAIN_DEV, answer_splits=("dev",)),
    "boolq": OfficialDataset("BoolQ", "yes_no", "training", _TRAIN_DEV),
    "race_string": OfficialDataset("RACE", "multiple_choice", "training", _TRAIN_DEV_TEST),
    "openbookqa": OfficialDataset("OpenBookQA", "multiple_choice", "training", _TRAIN_DEV_TEST),
    # Held out. Quoref, ROPES and NatQA repeat an input once per gold answer; the reader merges them.
    "newsqa": OfficialDataset("NewsQA", "extractive", "held_out", _TRAIN_DEV),
    "quoref": OfficialDataset("Quoref", "extractive", "held_out", _TRAIN_DEV),
    "ropes": OfficialDataset("ROPES", "extractive", "held_out", _TRAIN_DEV),
    "drop": OfficialDataset("DROP", "abstractive", "held_out", _TRAIN_DEV),
    # Open-domain NQ with paragraphs retrieved by DPR; the folder natural_questions has none.
    "natural_questions_with_dpr_para": OfficialDataset("NatQA", "abstractive", "held_out", _TRAIN_DEV),
    # The test files of QASC and CommonsenseQA have hidden labels: every target is "-".
    "qasc": OfficialDataset("QASC", "multiple_choice", "held_out", _TRAIN_DEV_TEST),
    "commonsenseqa": OfficialDataset("CommonsenseQA", "multiple_choice", "held_out", _TRAIN_DEV_TEST),
    "winogrande_xl": OfficialDataset("WinoGrande", "multiple_choice", "held_out", _TRAIN_DEV),
    "physical_iqa": OfficialDataset("PIQA", "multiple_choice", "held_out", _TRAIN_DEV),
    "social_iqa": OfficialDataset("SIQA", "multiple_choice", "held_out", _TRAIN_DEV),
    "boolq_np": OfficialDataset("BoolQ-NP", "yes_no", "held_out", _TRAIN_DEV),
    # encode_datasets.py writes MultiRC's dev and train questions into both files alike.
    "multirc": OfficialDataset("MultiRC", "yes_no", "held_out", _TRAIN_DEV),
}
"""Every UnifiedQA dataset this suite knows, by its folder name in the bucket."""

OFFICIAL_DATASET_FORMATS: dict[str, str] = {name: spec.format for name, spec in OFFICIAL_DATASETS.items()}

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


def unknown_dataset(name: str, known: Iterable[str]) -> str:
    """'unknown dataset ...' with the closest known name as a suggestion, then every known name."""
    known = sorted(known)
    # cutoff 0.6 is difflib's default: "sqaud1_1" finds squad1_1, "trivia" finds nothing.
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown dataset {name!r}{hint}; known datasets: {', '.join(known)}"


def format_of(dataset: str) -> str:
    """Return the answer format of a dataset, or raise DataError naming the known ones."""
    try:
        return DATASET_FORMATS[dataset]
    except KeyError:
        raise DataError([Problem(unknown_dataset(dataset, DATASET_FORMATS))]) from None


def official_datasets_help() -> str:
    """The official datasets as a text table by group, for `runner data fetch --help`."""
    headings = {
        "training": "Trained on by UnifiedQA (the paper's 8 seen datasets; ARC is two folders):",
        "science": "AI2 science exam sets (also in UnifiedQA's training mixture):",
        "held_out": "Held out from UnifiedQA's training (the paper's 12 unseen datasets):",
    }
    width = max(map(len, OFFICIAL_DATASETS))
    lines = []
    for group in GROUPS:
        lines.append(headings[group])
        for name, spec in OFFICIAL_DATASETS.items():
            if spec.group != group:
                continue
            answers = f"; {', '.join(s + '_ans.jsonl' for s in spec.answer_splits)}" if spec.answer_splits else ""
            row = f"  {name:<{width}}  {spec.format:<15}  {' '.join(spec.splits):<14}  {spec.title}{answers}"
            lines.append(row.rstrip())
        lines.append("")
    return "\n".join(lines).rstrip()

"""`data.format: unifiedqa_tsv` — the official UnifiedQA files, one `input<TAB>target` per line.

The dataset name fixes the answer format (runner.data.example.DATASET_FORMATS), so only the
known UnifiedQA and synthetic names are served; the parser is runner.data.unifiedqa. A split's
gold answers, `<split>_ans.jsonl` beside `<split>.tsv`, replace its targets as references.
"""

from __future__ import annotations

from runner.data.example import OFFICIAL_DATASET_FORMATS, format_of
from runner.data.unifiedqa import answers_path, parse_tsv
from runner.errors import DataError
from runner.readers import Reader, register


def dataset_problem(name: str) -> str | None:
    """'unknown dataset ... (did you mean ...?); known datasets: ...' unless the name is known."""
    try:
        format_of(name)
    except DataError as exc:
        return exc.problems[0].message
    return None


def fetchable(name: str) -> bool:
    """Official UnifiedQA datasets download from the public bucket; synthetic ones are generated."""
    return name in OFFICIAL_DATASET_FORMATS


register(
    "unifiedqa_tsv",
    Reader(
        extension="tsv",
        parse=parse_tsv,
        dataset_problem=dataset_problem,
        fetchable=fetchable,
        answers_file=answers_path,
    ),
)

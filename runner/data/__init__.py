"""Question-answering data: the Example record, the UnifiedQA reader, the synthetic generator."""

from runner.data.example import (
    DATASET_FORMATS,
    FORMATS,
    OFFICIAL_DATASET_FORMATS,
    OFFICIAL_DATASETS,
    SYNTHETIC_DATASET_FORMATS,
    Example,
    OfficialDataset,
    format_of,
)
from runner.data.fetch import UNIFIEDQA_URL, fetch
from runner.data.synthetic import write_synthetic
from runner.data.unifiedqa import (
    answers_path,
    data_hash,
    format_options,
    load_split,
    parse_options,
    parse_tsv,
    read_tsv,
    split_path,
)

__all__ = [
    "DATASET_FORMATS",
    "FORMATS",
    "OFFICIAL_DATASET_FORMATS",
    "OFFICIAL_DATASETS",
    "SYNTHETIC_DATASET_FORMATS",
    "UNIFIEDQA_URL",
    "Example",
    "OfficialDataset",
    "answers_path",
    "data_hash",
    "fetch",
    "format_of",
    "format_options",
    "load_split",
    "parse_options",
    "parse_tsv",
    "read_tsv",
    "split_path",
    "write_synthetic",
]

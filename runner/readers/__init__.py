"""Data readers: one module each, registering a `Reader` under its manifest `data.format`.

Module name = manifest `data.format`. A split lives at `<root>/<dataset>/<split>.<extension>`.
Readers take bytes, not paths, so the runner reads each file once and hashes the very bytes it
parsed. Importing this package must not import torch: validation looks readers up.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from runner.data.example import Example
from runner.errors import DataError, Problem
from runner.registry import Registry

# A dataset name becomes a folder name and part of example ids, so it must not smuggle in "/",
# ".." or a leading "-"; the same rule as manifest names (runner.manifest.SAFE_NAME).
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


# C0 control bytes and DEL. A row is text: tab (the TSV separator, JSON whitespace) and newline
# (the row separator) have their place, and a carriage return only before a newline (CRLF files).
CONTROL_BYTES = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]")
_CONTROL_NAMES = {0x00: "NUL", 0x0D: "carriage return", 0x1B: "escape", 0x7F: "DEL"}


def control_problems(data: bytes, path: Path) -> list[Problem]:
    """One problem per line holding a control byte (the first such byte), in one pass over the bytes."""
    problems: list[Problem] = []
    line, counted_to, last_line = 1, 0, 0
    for match in CONTROL_BYTES.finditer(data):
        at = match.start()
        if data[at] == 0x0D and data[at + 1 : at + 2] in (b"\n", b""):
            continue
        line += data.count(b"\n", counted_to, at)
        counted_to = at
        if line == last_line:
            continue
        last_line = line
        column = at - (data.rfind(b"\n", 0, at) + 1) + 1
        name = _CONTROL_NAMES.get(data[at], "control character")
        problems.append(Problem(f"{name} (byte 0x{data[at]:02x}) at column {column}: data rows are text; remove it", str(path), line))
    return problems


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a dataset folder name, or None if it can."""
    if SAFE_NAME.match(name):
        return None
    return (
        f"dataset name {name!r} is not a safe folder name: use 1-128 letters, digits, '.', '_' or '-', "
        "starting with a letter or digit"
    )


def _nothing_fetchable(name: str) -> bool:
    return False


@dataclass(frozen=True)
class Reader:
    """How to find and parse one data format; everything else about data is format-free."""

    extension: str
    """File suffix without the dot ("tsv", "jsonl"): a split lives at <root>/<dataset>/<split>.<extension>."""
    parse: Callable[..., list[Example]]
    """(file bytes, path for messages, dataset, split) -> examples in file order; raises
    runner.errors.DataError listing every problem of the file, each as Problem(message, str(path), line).
    A reader with `answers_file` also takes `answers=` the bytes of that file when it exists."""
    dataset_problem: Callable[[str], str | None] = name_problem
    """Why this reader cannot serve a dataset name (checked at validation), or None if it can."""
    fetchable: Callable[[str], bool] = _nothing_fetchable
    """Whether `runner data fetch` can download this dataset's files."""
    answers_file: Callable[[Path], Path] | None = None
    """Split file -> where its optional gold-answers file sits (None: the format has none). When
    that file exists, the runner hashes it with the split and passes its bytes to `parse`."""


READERS: Registry[Reader] = Registry(__name__, "data format")


def register(name: str, reader: Reader) -> Reader:
    """Register a reader under its manifest `data.format` name."""
    return READERS.register(name, reader)


def split_file(root: Path, dataset: str, split: str, data_format: str) -> Path:
    """Where one split of a dataset lives under a data root: <root>/<dataset>/<split>.<extension>."""
    return Path(root) / dataset / f"{split}.{READERS.get(data_format).extension}"


def answers_file(split_file: Path, data_format: str) -> Path | None:
    """Where a split file's optional gold-answers file sits, or None if the format has none."""
    locate = READERS.get(data_format).answers_file
    return None if locate is None else locate(Path(split_file))


def parse_split(
    data: bytes, path: Path, dataset: str, split: str, data_format: str, max_examples: int | None,
    answers: bytes | None = None,
) -> list[Example]:
    """Parse one split file's bytes (and its answers file's) with the format's reader; keep the first `max_examples`."""
    if max_examples is not None and max_examples < 0:
        raise ValueError(f"max_examples must be >= 0, got {max_examples}")
    reader = READERS.get(data_format)
    if answers is not None and reader.answers_file is None:
        raise ValueError(f"data format {data_format!r} has no answers file")
    # The whole file is parsed even when only a few examples are kept, so a broken line past the
    # cut is still reported and the data hash always describes a file that parses.
    control = control_problems(data, Path(path))
    if answers is not None:
        control += control_problems(answers, reader.answers_file(Path(path)))
    try:
        if answers is None:
            examples = reader.parse(data, Path(path), dataset, split)
        else:
            examples = reader.parse(data, Path(path), dataset, split, answers=answers)
    except DataError as exc:
        if not control:
            raise
        # A line with a control byte is reported for that alone, not also for what it broke.
        flagged = {(p.file, p.line) for p in control}
        rest = [p for p in exc.problems if (p.file, p.line) not in flagged]
        raise DataError(sorted(control + rest, key=lambda p: (p.file or "", p.line or 0))) from None
    if control:
        raise DataError(control)
    return examples if max_examples is None else examples[:max_examples]


@dataclass(frozen=True)
class SplitRead:
    """One split file (with its answers file, when the format has one and it exists), read once."""

    sha256: dict[Path, str]
    """sha256 of every file read: the split, then its answers file."""
    examples: tuple[Example, ...]
    problems: tuple[Problem, ...]
    """Every problem the reader found (then `examples` is empty)."""


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_size, stat.st_mtime_ns


def read_split(path: Path, dataset: str, split: str, data_format: str) -> SplitRead:
    """Read, hash and parse one split file (all of it, no limit); OSError if it cannot be read.

    Cached per process by the files' sizes and modification times, so validation, the plan and a
    run of many manifests over the same data parse each file once.
    """
    beside = answers_file(path, data_format)
    return _read_split_cached(Path(path), dataset, split, data_format, _stamp(Path(path)), beside, _stamp(beside) if beside else None)


@functools.lru_cache(maxsize=32)
def _read_split_cached(path: Path, dataset: str, split: str, data_format: str, stamp, beside: Path | None, beside_stamp) -> SplitRead:
    data = path.read_bytes()
    sha256 = {path: hashlib.sha256(data).hexdigest()}
    # Optional: without it the split's own targets are the references.
    answers = beside.read_bytes() if beside is not None and beside_stamp is not None else None
    if answers is not None:
        # The gold answers are references: a changed answers file is changed data.
        sha256[beside] = hashlib.sha256(answers).hexdigest()
    try:
        examples = parse_split(data, path, dataset, split, data_format, None, answers=answers)
    except DataError as exc:
        return SplitRead(sha256, (), tuple(exc.problems))
    return SplitRead(sha256, tuple(examples), ())

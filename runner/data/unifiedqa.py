"""Reader of the official UnifiedQA TSV format: one `input<TAB>target` per line.

A split may have a gold-answers file beside it, `<split>_ans.jsonl` (UnifiedQA publishes them for
SQuAD dev): line i holds the JSON list of every gold answer of TSV line i, and those answers, not
the TSV's single target, become the example's references, as in UnifiedQA's official scorer.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from runner.data.example import Example, format_of
from runner.errors import DataError, Problem

# UnifiedQA joins the parts of an input with the two characters backslash and n, not a newline.
PART_SEPARATOR = "\\n"

# The options part is the one that opens with "(a)"; UnifiedQA mixes "(A)" and "(a)".
_OPTIONS_START = re.compile(r"^\(a\)", re.IGNORECASE)

_READ_CHUNK = 1 << 20

# UnifiedQA writes "-" as the target of every question whose label is hidden (QASC and
# CommonsenseQA test): such a file has nothing to train on or score against.
_HIDDEN_TARGET = "-"
# A misaligned answers file fails on nearly every line; the first few say enough.
_MISMATCHES_SHOWN = 5


def split_path(root: Path, dataset: str, split: str) -> Path:
    """Return where a dataset's split lives under a data root: root/<dataset>/<split>.tsv."""
    return Path(root) / dataset / f"{split}.tsv"


def answers_path(split_file: Path) -> Path:
    """Return where a split file's gold answers may sit: <split>_ans.jsonl beside <split>.tsv."""
    split_file = Path(split_file)
    return split_file.with_name(f"{split_file.stem}_ans.jsonl")


def parse_options(text: str) -> tuple[tuple[str, str], ...]:
    """Parse `(A) x (B) y ...` into ((a, x), (b, y), ...); letters must run a, b, c, ... in order."""
    # Searching for each next letter in turn, rather than splitting on any "(x)", keeps an option
    # text such as "vitamin (c) tablets" in one piece unless "(c)" is really the next marker.
    starts: list[tuple[str, int, int]] = []
    pos = 0
    for code in range(ord("a"), ord("z") + 1):
        letter = chr(code)
        match = re.compile(rf"\({letter}\)", re.IGNORECASE).search(text, pos)
        if match is None:
            break
        starts.append((letter, match.start(), match.end()))
        pos = match.end()
    options = []
    for i, (letter, _, end) in enumerate(starts):
        stop = starts[i + 1][1] if i + 1 < len(starts) else len(text)
        options.append((letter, text[end:stop].strip()))
    return tuple(options)


def format_options(options: Sequence[tuple[str, str]]) -> str:
    """Write ((a, x), (b, y), ...) as UnifiedQA's options part `(A) x (B) y ...`."""
    return " ".join(f"({letter.upper()}) {text}" for letter, text in options)


def _parse_input(text: str, fmt: str) -> tuple[list[str], tuple[tuple[str, str], ...], str, list[str]]:
    """Split one input into (parts, options, context, problems)."""
    parts = [part.strip() for part in text.split(PART_SEPARATOR)]
    problems = []
    if not parts[0]:
        problems.append("empty question (the input starts with the \\n separator)")
    options: tuple[tuple[str, str], ...] = ()
    options_index = None
    if fmt == "multiple_choice":
        for i, part in enumerate(parts[1:], start=1):
            if _OPTIONS_START.match(part):
                options_index, options = i, parse_options(part)
                break
        if options_index is None:
            problems.append("multiple-choice input has no options part starting with '(A)'")
    context = "\n".join(p for i, p in enumerate(parts) if i not in (0, options_index) and p)
    return parts, options, context, problems


def _parse_row(text: str, fmt: str) -> tuple[tuple | None, list[str]]:
    """Parse one line into ((input, question, options, context, target) or None, problems)."""
    tabs = text.count("\t")
    if not text.strip():
        return None, ["blank line"]
    if tabs == 0:
        return None, ["no tab between input and target"]
    if tabs > 1:
        return None, [f"{tabs} tabs; expected exactly one between input and target"]
    source, target = (field.strip() for field in text.split("\t"))
    problems = [m for m, bad in (("empty input", not source), ("empty target", not target)) if bad]
    if problems:
        return None, problems
    parts, options, context, problems = _parse_input(source, fmt)
    if problems:
        return None, problems
    return ("\n".join(parts), parts[0], options, context, target), []


def decode_lines(data: bytes, path: Path, problems: list[Problem]) -> list[tuple[int, str | None]]:
    """Split file bytes into (line number, text or None if undecodable), dropping trailing blanks."""
    raw_lines = data.split(b"\n")
    if raw_lines and raw_lines[0].startswith(b"\xef\xbb\xbf"):
        raw_lines[0] = raw_lines[0][3:]  # a UTF-8 byte-order mark is not part of the text
    while raw_lines and not raw_lines[-1].strip():
        raw_lines.pop()  # the final newline and any blank lines after the last example are fine
    lines: list[tuple[int, str | None]] = []
    for number, raw in enumerate(raw_lines, start=1):
        raw = raw.removesuffix(b"\r")
        try:
            lines.append((number, raw.decode("utf-8")))
        except UnicodeDecodeError as exc:
            bad = raw[exc.start : exc.start + 1].hex()
            msg = f"not valid UTF-8 (byte 0x{bad} at column {exc.start + 1})"
            problems.append(Problem(msg, file=str(path), line=number))
            lines.append((number, None))
    return lines


def read_tsv(path: Path, dataset: str, split: str) -> list[Example]:
    """Read one UnifiedQA TSV file (and its answers file, if beside it); duplicate inputs merge."""
    path = Path(path)
    format_of(dataset)  # an unknown dataset is reported before the file is touched
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError([Problem("data file not found", file=str(path))]) from None
    except OSError as exc:
        raise DataError([Problem(f"cannot read data file: {exc.strerror}", file=str(path))]) from None
    try:
        answers: bytes | None = answers_path(path).read_bytes()
    except FileNotFoundError:
        answers = None
    except OSError as exc:
        message = f"cannot read answers file: {exc.strerror}"
        raise DataError([Problem(message, file=str(answers_path(path)))]) from None
    return parse_tsv(data, path, dataset, split, answers=answers)


def _parse_answers(data: bytes, path: Path, problems: list[Problem]) -> dict[int, list[str]]:
    """Line number → the stripped, non-empty answers of that line of a `<split>_ans.jsonl` file."""
    golds: dict[int, list[str]] = {}
    for number, text in decode_lines(data, path, problems):
        if text is None:
            continue
        try:
            value = json.loads(text)
        except (ValueError, RecursionError) as exc:
            problems.append(Problem(f"not JSON: {exc}", file=str(path), line=number))
            continue
        if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
            problems.append(Problem("expected a JSON list of answer strings", file=str(path), line=number))
            continue
        # The TSV reader strips targets, so gold answers are stripped too, to compare like with like.
        golds[number] = [a.strip() for a in value if a.strip()]
        if not golds[number]:
            problems.append(Problem("no non-empty answer", file=str(path), line=number))
    return golds


def _check_answers(golds: dict[int, list[str]], lines: int, targets: list[tuple[int, str]],
                   path: Path, answers_file: Path) -> list[Problem]:
    """Problems pairing an answers file with its TSV: the line counts differ or a target is missing."""
    if len(golds) != lines:
        # Lines that did not parse are already reported; only a clean file's count is comparable.
        return [Problem(f"{len(golds)} answer lines for the {lines} lines of {path.name}; UnifiedQA pairs "
                        "them line by line", file=str(answers_file))]
    # Each answers line starts with the TSV line's own target, so a target missing from its line
    # means the two files do not belong together.
    missing = [(number, target) for number, target in targets if target not in golds.get(number, ())]
    problems = [
        Problem(f"target {target!r} is not among the gold answers on line {number} of {answers_file.name}; "
                "the two files do not belong together", file=str(path), line=number)
        for number, target in missing[:_MISMATCHES_SHOWN]
    ]
    if len(missing) > _MISMATCHES_SHOWN:
        problems.append(Problem(f"and {len(missing) - _MISMATCHES_SHOWN} more lines whose target is not "
                                f"among their gold answers in {answers_file.name}", file=str(path)))
    return problems


def parse_tsv(data: bytes, path: Path, dataset: str, split: str, answers: bytes | None = None) -> list[Example]:
    """Parse the bytes of one UnifiedQA TSV file (and of its answers file); `path` only locates problems."""
    fmt = format_of(dataset)
    problems: list[Problem] = []
    # input text → [line, question, options, context, references]; dicts keep first-seen order.
    merged: dict[str, list] = {}
    lines = decode_lines(data, path, problems)
    golds = None if answers is None else _parse_answers(answers, answers_path(path), problems)
    targets: list[tuple[int, str]] = []
    for number, text in lines:
        if text is None:
            continue
        parsed, messages = _parse_row(text, fmt)
        problems.extend(Problem(m, file=str(path), line=number) for m in messages)
        if parsed is None:
            continue
        key, question, options, context, target = parsed
        targets.append((number, target))
        # With an answers file a line's references are its gold answers, else its target alone;
        # a merged example gets the references of all its lines.
        references = [target] if golds is None else golds.get(number, [])
        if key not in merged:
            merged[key] = [number, question, options, context, []]
        for reference in references:
            if reference not in merged[key][4]:  # SQuAD annotators often agree: keep one copy
                merged[key][4].append(reference)

    if golds is not None and not problems:
        problems.extend(_check_answers(golds, len(lines), targets, path, answers_path(path)))
    if not merged and not problems:
        problems.append(Problem("file has no examples", file=str(path)))
    if not problems and all(target == _HIDDEN_TARGET for _, target in targets):
        problems.append(Problem(f"every target is {_HIDDEN_TARGET!r}: this split's labels are hidden, so it "
                                "has nothing to train on or score against; use another split", file=str(path)))
    if problems:
        raise DataError(problems)
    return [
        Example(
            id=f"{dataset}/{split}/{n}",
            dataset=dataset,
            split=split,
            format=fmt,
            input=key,
            question=question,
            options=options,
            context=context,
            answers=tuple(references),
            line=line,
        )
        for n, (key, (line, question, options, context, references)) in enumerate(merged.items())
    ]


def load_split(
    root: Path, datasets: Sequence[str], split: str, limit_per_dataset: int | None = None
) -> list[Example]:
    """Read root/<dataset>/<split>.tsv for each dataset in order, keeping the first `limit` of each."""
    if limit_per_dataset is not None and limit_per_dataset < 0:
        raise ValueError(f"limit_per_dataset must be >= 0, got {limit_per_dataset}")
    examples: list[Example] = []
    problems: list[Problem] = []
    # Read every dataset before raising, so one run reports every broken or missing file.
    for dataset in datasets:
        try:
            rows = read_tsv(split_path(root, dataset, split), dataset, split)
        except DataError as exc:
            problems.extend(exc.problems)
            continue
        examples.extend(rows if limit_per_dataset is None else rows[:limit_per_dataset])
    if problems:
        raise DataError(problems)
    return examples


def data_hash(paths: Iterable[Path]) -> str:
    """Return the hex sha256 of the files' bytes, in the given order, for provenance."""
    digest = hashlib.sha256()
    for path in paths:
        # Prefix each file with its length so moving bytes between files changes the hash.
        digest.update(Path(path).stat().st_size.to_bytes(8, "big"))
        with open(path, "rb") as handle:
            while chunk := handle.read(_READ_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()

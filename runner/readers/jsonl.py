"""`data.format: jsonl` — a user's own QA data, one JSON object per line.

A split lives at `<root>/<dataset>/<split>.jsonl`. Each line is one example:

    {"question": "...", "context": "...", "options": ["...", "..."], "answers": ["..."],
     "format": "...", "dataset": "...", "id": "..."}

Only `question` and `answers` are required; unknown keys are errors and null means absent.
Without `format`, options make it multiple_choice, all-yes/no answers yes_no, answers that all
occur in a non-empty context extractive, anything else abstractive. The Example built is the one
the UnifiedQA TSV reader builds for the same content, so prompts and scoring cannot tell them apart.
"""

from __future__ import annotations

import difflib
import json
import re
import string
from pathlib import Path
from typing import Any

from runner.data.example import FORMATS, Example
from runner.data.unifiedqa import decode_lines, format_options
from runner.errors import DataError, Problem
from runner.readers import Reader, name_problem, register

KEYS = ("question", "context", "options", "answers", "format", "dataset", "id")
"""Every key a line may have, in the order the documentation lists them."""

# Options are lettered a..z like UnifiedQA's "(A) ... (B) ...", so 26 is the most a line can have.
_LETTERS = string.ascii_lowercase
_YES_NO = {"yes", "no"}
# Decoded text: C0 controls and DEL but tab, newline and carriage return (the raw bytes are checked in runner.readers).
CONTROL_CHARACTERS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class _DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the last of two equal keys silently; a repeated "answers" is a typo to show.
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


def _kind(value: Any) -> str:
    """The type of a decoded JSON value, in words a user can match to their file."""
    if value is None:
        return "null"
    if isinstance(value, bool):  # before int: bool is a subclass of int
        return "bool"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _text(obj: dict[str, Any], key: str, problems: list[str], required: bool = False) -> str | None:
    """The stripped string under `key`; None when absent (a problem if required) or malformed."""
    value = obj.get(key)
    if value is None:
        if required:
            problems.append(f"missing {key}: every line needs a non-empty {key!r} string")
        return None
    if not isinstance(value, str):
        problems.append(f"{key} must be a string, got {_kind(value)}")
        return None
    if (problem := _control_problem(key, value)) is not None:
        problems.append(problem)
        return None
    return value.strip()


def _texts(obj: dict[str, Any], key: str, problems: list[str]) -> list[str] | None:
    """The stripped strings of the list under `key`, or None (with problems) if it is malformed."""
    value = obj[key]
    if not isinstance(value, list):
        problems.append(f"{key} must be a list of strings, got {_kind(value)}")
        return None
    texts = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            problems.append(f"{key}[{i}] must be a string, got {_kind(item)}")
        elif (problem := _control_problem(f"{key}[{i}]", item)) is not None:
            problems.append(problem)
        elif not item.strip():
            problems.append(f"{key}[{i}] is empty")
        else:
            texts.append(item.strip())
    return texts if len(texts) == len(value) else None


def _control_problem(key: str, value: str) -> str | None:
    """A control character written as a JSON escape (\\u0000): text may hold tab and newline only."""
    found = CONTROL_CHARACTERS.search(value)
    if found is None:
        return None
    return f"{key} holds the control character U+{ord(found.group()):04X} at position {found.start() + 1}; only tab and newline may appear in text"


def _unknown_key(key: str) -> str:
    close = difflib.get_close_matches(key, KEYS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key {key!r}{hint}; allowed keys: {', '.join(KEYS)}"


def _infer_format(options: list[str], answers: list[str], context: str) -> str:
    """The answer format a line without `format` gets (the rule the documentation states)."""
    if options:
        return "multiple_choice"
    if all(answer.lower() in _YES_NO for answer in answers):
        return "yes_no"
    # Case-sensitive, like a SQuAD span: the answer must be copyable from the context as written.
    if context and all(answer in context for answer in answers):
        return "extractive"
    return "abstractive"


def _parse_object(obj: dict[str, Any], folder_dataset: str) -> tuple[dict[str, Any] | None, list[str]]:
    """Check one decoded line; return its Example fields (without id) or None, and the problems."""
    problems = [_unknown_key(key) for key in obj if key not in KEYS]

    question = _text(obj, "question", problems, required=True)
    if question == "":
        problems.append("question is empty")
    context = _text(obj, "context", problems) or ""

    options: list[str] = []
    if obj.get("options") is not None:
        parsed = _texts(obj, "options", problems)
        if parsed is not None:
            if len(parsed) < 2:
                problems.append(f"options must list at least 2 choices, got {len(parsed)}")
            elif len(parsed) > len(_LETTERS):
                problems.append(f"options must list at most {len(_LETTERS)} choices (a-z), got {len(parsed)}")
            elif len(set(parsed)) < len(parsed):
                repeated = sorted({text for text in parsed if parsed.count(text) > 1})
                problems.append(f"options repeat {', '.join(map(repr, repeated))}; an answer must name one option")
            else:
                options = parsed

    answers: list[str] = []
    if obj.get("answers") is None:
        problems.append('missing answers: every line needs "answers": ["..."], a list of reference answers')
    else:
        parsed = _texts(obj, "answers", problems)
        if parsed == []:
            problems.append("answers is empty: give at least one reference answer")
        elif parsed:
            answers = list(dict.fromkeys(parsed))  # distinct, in order of first appearance

    fmt = _text(obj, "format", problems)
    if fmt is not None and fmt not in FORMATS:
        problems.append(f"unknown format {fmt!r}; expected one of: {', '.join(FORMATS)}")

    dataset = _text(obj, "dataset", problems)
    if dataset is not None and (message := name_problem(dataset)):
        problems.append(message)

    if problems:
        return None, problems

    fmt = fmt or _infer_format(options, answers, context)
    if options and fmt != "multiple_choice":
        problems.append(f"options are given but format is {fmt!r}; only multiple_choice has options")
    if fmt == "multiple_choice":
        if not options:
            problems.append("format multiple_choice needs options: a list of at least 2 choices")
        for answer in answers:
            if options and answer not in options:
                problems.append(f"answer {answer!r} is not one of the options {options}")
    if problems:
        return None, problems

    lettered = tuple(zip(_LETTERS, options))
    # The UnifiedQA input: question, options part, context, each on its own line, as the TSV
    # reader produces from "question \n (A) x (B) y \n context".
    parts = [question, *([format_options(lettered)] if lettered else []), *([context] if context else [])]
    return {
        "dataset": dataset or folder_dataset,
        "format": fmt,
        "input": "\n".join(parts),
        "question": question,
        "options": lettered,
        "context": context,
        "answers": tuple(answers),
    }, []


def _parse_line(text: str, folder_dataset: str) -> tuple[dict[str, Any] | None, str | None, list[str]]:
    """Decode one non-blank line; return (Example fields, explicit id or None, problems)."""
    try:
        obj = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except _DuplicateKey as exc:
        return None, None, [f"duplicate key {exc.key!r} in one object"]
    except json.JSONDecodeError as exc:
        return None, None, [f"invalid JSON: {exc.msg} at column {exc.colno}"]
    except RecursionError:
        return None, None, ["invalid JSON: nested too deeply"]
    except ValueError:  # int() refuses more than 4,300 digits (sys.get_int_max_str_digits)
        return None, None, ["invalid JSON: a number too long to read"]
    if not isinstance(obj, dict):
        return None, None, [f"expected a JSON object {{...}}, got {_kind(obj)}"]
    problems: list[str] = []
    explicit_id = _text(obj, "id", problems)
    if explicit_id == "":
        problems.append("id is empty; leave it out to get <dataset>/<split>/<n>")
    fields, more = _parse_object(obj, folder_dataset)
    return (None if problems else fields), explicit_id, problems + more


def parse_jsonl(data: bytes, path: Path, dataset: str, split: str) -> list[Example]:
    """Parse one JSONL split file's bytes into Examples, reporting every bad line at once."""
    problems: list[Problem] = []
    rows: list[tuple[int, str, dict[str, Any]]] = []
    first_line_of: dict[str, int] = {}
    n = 0
    for number, text in decode_lines(data, path, problems):
        if text is None or not text.strip():
            continue  # undecodable lines are already reported; blank lines are allowed
        fields, explicit_id, messages = _parse_line(text, dataset)
        # The default id uses the folder's dataset name, not the line's: folder names are unique
        # in a manifest, so ids stay unique across files even when lines rename their dataset.
        example_id = explicit_id or f"{dataset}/{split}/{n}"
        n += 1
        if example_id in first_line_of:
            messages.append(f"duplicate id {example_id!r}; first used on line {first_line_of[example_id]}")
        else:
            first_line_of[example_id] = number
        problems.extend(Problem(message, file=str(path), line=number) for message in messages)
        if fields is not None and not messages:
            rows.append((number, example_id, fields))

    if not rows and not problems:
        problems.append(Problem("file has no examples", file=str(path)))
    if problems:
        raise DataError(sorted(problems, key=lambda p: p.line or 0))
    return [Example(id=example_id, split=split, line=number, **fields) for number, example_id, fields in rows]


register("jsonl", Reader(extension="jsonl", parse=parse_jsonl))

"""Property-based tests of every input boundary: manifests, grid files and data files made by mutating
valid ones (wrong types, out-of-range and non-finite numbers, unicode, deep nesting, aliases,
truncation, random bytes). For every input `runner validate` exits 0 or 2, prints no traceback,
finishes within a time bound and writes nothing; a data file parses or raises DataError.

The example budget is a Hypothesis profile chosen by QABENCH_FUZZ: `ci` (default; a few seconds,
derandomized so CI never flakes) or `fuzz` (`just fuzz`: 3,000 random examples per property, or
QABENCH_FUZZ_EXAMPLES; failures kept in ~/.cache/qabench/hypothesis to replay).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

from conftest import REPO
from runner.cli import main

SECONDS_PER_EXAMPLE = 10.0
"""Hang bound: validation takes well under a second; ten leaves room for a loaded shared CPU."""

_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]
settings.register_profile("ci", max_examples=30, deadline=None, database=None, derandomize=True, suppress_health_check=_QUIET)
settings.register_profile(
    "fuzz", max_examples=int(os.environ.get("QABENCH_FUZZ_EXAMPLES", "3000")), deadline=None, suppress_health_check=_QUIET,
    database=DirectoryBasedExampleDatabase(str(Path.home() / ".cache" / "qabench" / "hypothesis")),
)
settings.load_profile(os.environ.get("QABENCH_FUZZ", "ci"))

DATA = REPO / "data" / "synthetic"

BASE_MANIFESTS: list[dict[str, Any]] = [
    {
        "name": "fuzz-lora",
        "model": {"package": "gemma3-270m"},
        "data": {"root": str(DATA), "datasets": ["synthetic_yes_no", "synthetic_extractive"], "max_eval_examples": 4},
        "method": {"kind": "lora", "r": 8, "alpha": 16, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]},
        "train": {"steps": 4, "batch_size": 2, "learning_rate": 1e-3, "seed": 1, "save_steps": 2},
        "icl": {"shots": 1, "seed": 3, "example_template": "{context}Question: {question}\n{options}Answer:"},
        "decoding": {"kind": "sample", "temperature": 0.7, "top_k": 40, "top_p": 0.9, "seed": 5, "max_new_tokens_by_format": {"yes_no": 4}},
        "eval": {"shard_size": 5, "metrics": ["exact_match", "f1"]},
    },
    {
        "name": "fuzz-adalora",
        "description": "AdaLoRA with prompt lookup",
        "model": {"package": "smollm2-135m", "dtype": "float32"},
        "data": {"root": str(DATA), "datasets": ["synthetic_multiple_choice"], "train_split": "train", "eval_split": "dev"},
        "method": {"kind": "adalora", "init_r": 8, "target_r": 4, "tinit": 1, "tfinal": 1, "deltaT": 1},
        "train": {"epochs": 1.5, "gradient_accumulation_steps": 2, "heldout_examples": 4, "report_to": ["tensorboard"]},
        "decoding": {"kind": "prompt_lookup", "num_tokens": 5, "max_ngram": 2},
        "eval": {"protocol": "generate", "merge_adapter": False},
    },
    {
        "name": "fuzz-speculative",
        "model": {"package": "gemma3-270m", "instruction_tuned": False},
        "data": {"root": str(DATA), "datasets": ["synthetic_abstractive"]},
        "method": {"kind": "prompt_tuning", "num_virtual_tokens": 8},
        "icl": {"chat_template": "never", "strategy": "per_dataset"},
        "decoding": {"kind": "speculative", "draft": {"package": "smollm2-135m"}, "cross_tokenizer": True, "num_draft_tokens": 4},
        "devices": 1,
    },
]

# Plain YAML tokens that are surprising, hostile or borderline, written raw into the text.
RAW_TOKENS = [
    "1:30", "010", "0o17", "0x1F", ".inf", "-.inf", ".nan", "1e30", "1e-400", "-0", "+1", "1_000", "yes", "no", "on", "off",
    "~", "null", "''", '""', "2026-11-26", "!!binary aGVsbG8=", "!!python/object:os.system x", "!!set {a, b}", "!!int 1:30",
    "!!float abc", "!!bool maybe", "!!str 010", "*undefined", "&anchor value", "[", "{", "]", "}", "- x", "|", ">", "? x",
    "<<: *m", "'unterminated", '"unterminated', "a: b: c", "@", "`", "%YAML 1.1", "---", "...", "\t", "\x00", "\ufeff", "\u2028",
    "99999999999999999999999999", "-99999999999999999999", "4294967296", "18446744073709551616", "1e309", "0.0000001",
    "9" * 5000, "9" * 400 + ":30", "-1:30:15.5", "{question:>99999999}", "'{question!r}'", "'{question.__class__}'", "'{0}'", "../../etc/passwd", "/dev/zero",
]

_scalars = st.one_of(
    st.integers(min_value=-(2**80), max_value=2**80),
    st.sampled_from([0, -1, 1, 15, 16, 2**31, 2**32 - 1, 2**32, 2**63, 2**64, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=30),
    st.sampled_from(["", "lora", "none", "greedy", "sample", "auto", "{question}", "{question:>99}", "{question!r}", "{", "../x", "a" * 300]),
)
_values = st.recursive(
    _scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12
)


def _paths(data: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value in nested dicts and lists."""
    found = [prefix] if prefix else []
    if isinstance(data, dict):
        for key, value in data.items():
            found += _paths(value, prefix + (key,))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found += _paths(value, prefix + (index,))
    return found


def _get(data: Any, path: tuple) -> Any:
    for part in path:
        data = data[part]
    return data


def _set(data: Any, path: tuple, value: Any, delete: bool = False) -> None:
    for part in path[:-1]:
        data = data[part]
    if delete:
        del data[path[-1]]
    else:
        data[path[-1]] = value


@st.composite
def mutated_structures(draw) -> dict[str, Any]:
    """A valid manifest with 1-4 of its values replaced, deleted, or unknown keys added."""
    data = json.loads(json.dumps(draw(st.sampled_from(BASE_MANIFESTS))))
    for _ in range(draw(st.integers(1, 4))):
        paths = _paths(data)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["replace", "replace", "same_type", "same_type", "delete", "add"]))
        current = _get(data, path)
        if action == "same_type" and isinstance(current, (int, float)) and not isinstance(current, bool):
            # Numbers of the field's own type around its range's edges: most are accepted, some not.
            if isinstance(current, int):
                value = draw(st.integers(-2, 2**33) | st.sampled_from([0, 1, 2**32 - 1, 2**32, 4096, 4097, 10**7, 10**7 + 1]))
            else:
                value = draw(st.floats(min_value=-1.0, max_value=2e4, allow_nan=False) | st.sampled_from([0.0, 1.0, 1e-9, 16384.0, 16385.0]))
            _set(data, path, value)
        elif action == "delete":
            _set(data, path, None, delete=True)
        elif action == "add":
            parent = data
            for part in path[:-1]:
                parent = parent[part]
            if isinstance(parent, dict):
                parent[draw(st.text(min_size=1, max_size=12))] = draw(_values)
        else:
            _set(data, path, draw(_values))
    return data


_VALUE_LINE = re.compile(r"^(\s*(?:- )?[^\s:#][^:#]*: )(\S.*)$")


@st.composite
def mutated_texts(draw, structures=mutated_structures()) -> bytes:
    """A manifest's YAML text after structural mutation, then 0-3 textual ones (raw tokens, aliases,
    nesting, duplicated or truncated lines, random bytes)."""
    data = draw(structures)
    text = yaml.safe_dump(data, sort_keys=draw(st.booleans()), allow_unicode=draw(st.booleans()), default_flow_style=draw(st.sampled_from([False, None])))
    raw = text.encode("utf-8")
    for _ in range(draw(st.integers(0, 3))):
        lines = raw.split(b"\n")
        action = draw(st.sampled_from(["token", "token", "alias", "nest", "duplicate", "truncate", "bytes", "unicode"]))
        index = draw(st.integers(0, max(len(lines) - 1, 0)))
        if action in ("token", "alias", "nest"):
            candidates = [i for i, line in enumerate(lines) if _VALUE_LINE.match(line.decode("utf-8", "replace"))]
            if not candidates:
                continue
            index = draw(st.sampled_from(candidates))
            head = _VALUE_LINE.match(lines[index].decode("utf-8", "replace")).group(1)
            if action == "token":
                value = draw(st.sampled_from(RAW_TOKENS) | st.text(max_size=20))
            elif action == "alias":
                # Anchor a fan-out at the top and use it as this value: 3-12 levels of 2-9 aliases.
                width, depth = draw(st.integers(2, 9)), draw(st.integers(3, 12))
                anchors = ["l0: &l0 [" + ", ".join(["x"] * width) + "]"]
                anchors += [f"l{d}: &l{d} [" + ", ".join([f"*l{d - 1}"] * width) + "]" for d in range(1, depth)]
                lines = [a.encode() for a in anchors] + lines
                index += len(anchors)
                value = f"*l{depth - 1}"
            else:
                depth = draw(st.integers(1, 400))
                value = "[" * depth + "1" + "]" * draw(st.sampled_from([depth, depth - 1, 0]))
            lines[index] = (head + value).encode("utf-8", "surrogatepass")
        elif action == "duplicate":
            lines.insert(index, lines[index])
        elif action == "truncate":
            raw = raw[: draw(st.integers(0, len(raw)))]
            continue
        elif action == "bytes":
            at = draw(st.integers(0, len(raw)))
            raw = raw[:at] + draw(st.binary(min_size=1, max_size=8)) + raw[at:]
            continue
        else:
            at = draw(st.integers(0, len(raw)))
            raw = raw[:at] + draw(st.text(min_size=1, max_size=4)).encode("utf-8", "surrogatepass") + raw[at:]
            continue
        raw = b"\n".join(lines)
    return raw


class Hang(Exception):
    """An input took longer than SECONDS_PER_EXAMPLE."""


@contextlib.contextmanager
def _time_bound(seconds: float):
    def stop(signum, frame):
        raise Hang(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _validate(files: dict[str, bytes], target: str) -> tuple[int, str]:
    """Write `files` into a fresh folder, run `runner validate <target>` there in-process; (exit code, output).

    Fails on an exception (a traceback), a hang, or any file written, changed or removed."""
    folder = Path(tempfile.mkdtemp(prefix="qabench-fuzz-"))
    try:
        for name, content in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(content)
        before = _listing(folder)
        out, err = io.StringIO(), io.StringIO()
        cwd = os.getcwd()
        os.chdir(folder)
        try:
            with _time_bound(SECONDS_PER_EXAMPLE), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(["validate", str(folder / target)])
        finally:
            os.chdir(cwd)
        output = out.getvalue() + err.getvalue()
        with contextlib.suppress(Exception):  # hypothesis.errors.InvalidArgument outside a property
            event(f"exit {code}")
        assert code in (0, 2), f"exit {code}\n{output}"
        assert "Traceback" not in output, output
        assert code == 0 or err.getvalue().strip(), "exit 2 without a line saying why"
        assert _listing(folder) == before, "validate wrote, changed or removed files"
        return code, output
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _finite_numbers_only(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite_numbers_only(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_finite_numbers_only(v) for v in value)
    return True


@given(mutated_texts())
def test_validate_answers_any_mutated_manifest_with_exit_0_or_2_quickly_and_writes_nothing(text):
    code, output = _validate({"manifest.yaml": text}, "manifest.yaml")
    if code == 0:
        from runner.manifest import Manifest, load_manifest, resolved_dict

        # An accepted manifest holds only finite numbers, and seeds numpy and torch can take.
        folder = Path(tempfile.mkdtemp(prefix="qabench-fuzz-"))
        try:
            (folder / "m.yaml").write_bytes(text)
            manifest: Manifest = load_manifest(folder / "m.yaml").manifest
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        resolved = resolved_dict(manifest)
        assert _finite_numbers_only(resolved), resolved
        seeds = [manifest.train.seed, manifest.icl.seed, getattr(manifest.decoding, "seed", 0)]
        assert all(0 <= s < 2**32 for s in seeds), seeds


BASE_GRID = f"""\
name: "fuzz-{{method}}-{{shots}}"
base:
  model: {{package: gemma3-270m}}
  data: {{root: {DATA}, datasets: [synthetic_yes_no]}}
  train: {{steps: 4, batch_size: 2}}
axes:
  method:
    - {{label: none, set: {{method: {{kind: none}}}}}}
    - {{label: lora, set: {{method: {{kind: lora, r: 4}}, train.learning_rate: 1.0e-3}}}}
  shots:
    - {{label: zero, set: {{icl.shots: 0}}}}
    - {{label: two, set: {{icl.shots: 2, icl.seed: 7}}}}
exclude:
  - {{method: lora, shots: two}}
"""


@given(mutated_texts(structures=st.just(yaml.safe_load(BASE_GRID))))
def test_validate_answers_any_mutated_grid_file_with_exit_0_or_2(text):
    _validate({"grid.yaml": text}, "grid.yaml")


TSV_LINES = (DATA / "synthetic_yes_no" / "train.tsv").read_bytes().split(b"\n")[:6]
JSONL_LINES = [
    json.dumps({"question": "Is water wet?", "answers": ["yes"]}).encode(),
    json.dumps({"question": "Pick one", "options": ["red", "blue"], "answers": ["blue"], "id": "q1"}).encode(),
    json.dumps({"question": "Where?", "context": "It is in Paris.", "answers": ["Paris"], "format": "extractive"}).encode(),
]
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["question", "answers", "options", "context", "format", "id", "dataset", "x"]), inner, max_size=4),
    max_leaves=10,
)


@st.composite
def mutated_data(draw, lines: list[bytes], jsonl: bool) -> bytes:
    """A valid data file with 1-3 rows replaced, damaged or added."""
    rows = list(lines)
    for _ in range(draw(st.integers(1, 3))):
        index = draw(st.integers(0, len(rows) - 1)) if rows else 0
        action = draw(st.sampled_from(["bytes", "control", "text", "truncate", "duplicate", "drop", "nest", "number", "json"] if jsonl else ["bytes", "control", "text", "truncate", "duplicate", "drop", "tabs"]))
        if action == "truncate":
            joined = b"\n".join(rows)
            rows = joined[: draw(st.integers(0, len(joined)))].split(b"\n")
        elif not rows:
            rows = [b""]
        elif action == "bytes":
            at = draw(st.integers(0, len(rows[index])))
            rows[index] = rows[index][:at] + draw(st.binary(min_size=1, max_size=6)) + rows[index][at:]
        elif action == "control":
            at = draw(st.integers(0, len(rows[index])))
            rows[index] = rows[index][:at] + bytes([draw(st.sampled_from([0, 1, 7, 8, 11, 12, 13, 27, 31, 127]))]) + rows[index][at:]
        elif action == "text":
            rows[index] = draw(st.text(max_size=60)).encode("utf-8", "surrogatepass")
        elif action == "duplicate":
            rows.insert(index, rows[index])
        elif action == "drop":
            del rows[index]
        elif action == "tabs":
            rows[index] = b"\t".join([rows[index]] * draw(st.integers(0, 3)))
        elif action == "nest":
            depth = draw(st.integers(1, 3000))
            rows[index] = b'{"question": ' + b"[" * depth + b"]" * depth + b', "answers": ["a"]}'
        elif action == "number":
            rows[index] = b'{"question": "q", "answers": ["a"], "x": ' + b"9" * draw(st.integers(1, 10_000)) + b"}"
        else:
            rows[index] = json.dumps(draw(_json_values), allow_nan=True).encode()
    return b"\n".join(rows) + draw(st.sampled_from([b"", b"\n", b"\r\n", b"\n\n"]))


def _parses_or_is_a_data_error(data: bytes, name: str, dataset: str, data_format: str) -> None:
    from runner.errors import DataError
    from runner.readers import parse_split

    with _time_bound(SECONDS_PER_EXAMPLE):
        try:
            examples = parse_split(data, Path(name), dataset, "train", data_format, None)
        except DataError as exc:
            event("DataError")
            assert exc.problems and all(str(p).startswith(name) for p in exc.problems), exc.problems
            assert all("\n" not in str(p) for p in exc.problems), exc.problems
            return
    event("parsed")
    # Accepted text carries no control character but tab and newline into prompts.
    for example in examples:
        for text in (example.input, example.question, example.context, *example.answers):
            assert not re.search("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", text), text


@given(mutated_data(TSV_LINES, jsonl=False))
def test_any_mutated_tsv_file_parses_or_is_a_data_error(data):
    _parses_or_is_a_data_error(data, "d/synthetic_yes_no/train.tsv", "synthetic_yes_no", "unifiedqa_tsv")


@given(mutated_data(JSONL_LINES, jsonl=True))
def test_any_mutated_jsonl_file_parses_or_is_a_data_error(data):
    _parses_or_is_a_data_error(data, "d/mine/train.jsonl", "mine", "jsonl")


@given(mutated_data(JSONL_LINES, jsonl=True), st.sampled_from(["train", "dev"]))
def test_validate_answers_a_manifest_over_mutated_data_with_exit_0_or_2(data, split):
    good = b"\n".join(JSONL_LINES) + b"\n"
    files = {"data/mine/train.jsonl": good, "data/mine/dev.jsonl": good, f"data/mine/{split}.jsonl": data}
    manifest = {
        "name": "fuzz-data", "model": {"package": "gemma3-270m"}, "data": {"root": "data", "format": "jsonl", "datasets": ["mine"]},
        "method": {"kind": "none"}, "icl": {"shots": 1},
    }
    files["m.yaml"] = yaml.safe_dump(manifest).encode()
    _validate(files, "m.yaml")


@pytest.mark.parametrize("seconds", [0.5])
def test_time_bound_stops_a_hang(seconds):
    started = time.perf_counter()
    with pytest.raises(Hang), _time_bound(seconds):
        while True:
            pass
    assert time.perf_counter() - started < seconds + 0.5


@pytest.mark.parametrize("base", [*BASE_MANIFESTS, "grid"], ids=[m["name"] for m in BASE_MANIFESTS] + ["grid"])
def test_every_input_the_fuzzer_mutates_starts_valid(base):
    if base == "grid":
        code, output = _validate({"grid.yaml": BASE_GRID.encode()}, "grid.yaml")
    else:
        code, output = _validate({"m.yaml": yaml.safe_dump(base).encode()}, "m.yaml")
    assert code == 0, output

"""Tests for runner.readers: the reader registry, the UnifiedQA TSV reader and the JSONL reader."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from conftest import REPO, SYNTHETIC
from runner.data import DATASET_FORMATS, FORMATS, format_options, parse_options, read_tsv
from runner.errors import DataError
from runner.readers import READERS, Reader, answers_file, parse_split, split_file

GOOD = {"question": "What is the capital of France?", "answers": ["Paris"]}


def jsonl(*lines: object) -> bytes:
    """File bytes with one line per argument: dicts and lists as JSON, strings verbatim."""
    return "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines).encode()


def parse(data: bytes, dataset: str = "trivia", split: str = "dev", path: Path = Path("d/trivia/dev.jsonl")):
    """Parse JSONL bytes through the registry."""
    return parse_split(data, path, dataset, split, "jsonl", None)


def problems_of(data: bytes, path: Path = Path("d/trivia/dev.jsonl")) -> list[str]:
    """Every problem the JSONL reader reports for `data`, as `FILE:LINE: message` strings."""
    with pytest.raises(DataError) as info:
        parse(data, path=path)
    return [str(problem) for problem in info.value.problems]


# ---------------------------------------------------------------- registry


def test_registry_keys_are_module_names_with_their_extensions():
    readers = READERS.discover()
    assert {"unifiedqa_tsv", "jsonl"} <= set(readers)
    assert all(isinstance(reader, Reader) for reader in readers.values())
    assert split_file(Path("r"), "boolq", "dev", "unifiedqa_tsv") == Path("r/boolq/dev.tsv")
    assert split_file(Path("r"), "trivia", "train", "jsonl") == Path("r/trivia/train.jsonl")


def test_importing_readers_and_discovering_them_does_not_import_torch():
    code = "import runner.readers as r, sys; r.READERS.discover(); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_decoding_budget_keys_are_exactly_the_formats_list():
    from runner.decoding import DecodingSpec

    key_type = typing.get_args(DecodingSpec.model_fields["max_new_tokens_by_format"].annotation)[0]
    assert typing.get_args(key_type) == FORMATS


# ---------------------------------------------------------------- UnifiedQA TSV


def test_tsv_reader_through_registry_gives_the_same_examples_as_read_tsv(small_data):
    for dataset in SYNTHETIC:
        for split in ("train", "dev"):
            path = split_file(small_data, dataset, split, "unifiedqa_tsv")
            expected = read_tsv(path, dataset, split)
            assert parse_split(path.read_bytes(), path, dataset, split, "unifiedqa_tsv", None) == expected


def test_parse_split_keeps_the_first_n_examples_after_merging_duplicates(small_data):
    path = split_file(small_data, "synthetic_abstractive", "train", "unifiedqa_tsv")
    every = read_tsv(path, "synthetic_abstractive", "train")
    assert parse_split(path.read_bytes(), path, "synthetic_abstractive", "train", "unifiedqa_tsv", 7) == every[:7]
    assert parse_split(jsonl(GOOD, GOOD | {"id": "x"}), Path("f"), "trivia", "dev", "jsonl", 1) == parse(jsonl(GOOD))


def test_parse_split_reports_a_bad_line_past_the_kept_examples():
    with pytest.raises(DataError, match="f:3: invalid JSON"):
        parse_split(jsonl(GOOD, GOOD | {"id": "x"}, "{"), Path("f"), "t", "dev", "jsonl", 1)


def test_tsv_problems_name_the_path_given_not_a_path_read():
    with pytest.raises(DataError) as info:
        parse_split(b"no tab here\n", Path("shown/boolq/dev.tsv"), "boolq", "dev", "unifiedqa_tsv", None)
    assert [str(p) for p in info.value.problems] == ["shown/boolq/dev.tsv:1: no tab between input and target"]


def test_tsv_dataset_problem_names_unknown_dataset_and_the_known_ones():
    reader = READERS.get("unifiedqa_tsv")
    assert all(reader.dataset_problem(name) is None for name in DATASET_FORMATS)
    message = reader.dataset_problem("trivia")
    assert message.startswith("unknown dataset 'trivia'; known datasets: ")
    assert "boolq" in message and "synthetic_yes_no" in message and "winogrande_xl" in message


def test_tsv_dataset_problem_suggests_the_closest_known_name():
    reader = READERS.get("unifiedqa_tsv")
    for typo, known in (("winogrande", "winogrande_xl"), ("commonseseqa", "commonsenseqa")):
        assert reader.dataset_problem(typo).startswith(f"unknown dataset '{typo}' (did you mean '{known}'?); ")


def test_only_official_unifiedqa_datasets_are_fetchable():
    tsv, own = READERS.get("unifiedqa_tsv"), READERS.get("jsonl")
    assert tsv.fetchable("boolq") and tsv.fetchable("squad2") and tsv.fetchable("natural_questions_with_dpr_para")
    assert not tsv.fetchable("synthetic_yes_no") and not tsv.fetchable("trivia")
    assert not own.fetchable("boolq")


def test_tsv_answers_file_sits_beside_the_split_and_reaches_parse_split(tmp_path):
    path = tmp_path / "squad2" / "dev.tsv"
    path.parent.mkdir()
    path.write_text("who ran? \\n ann ran.\tann\n")
    beside = answers_file(path, "unifiedqa_tsv")
    assert beside == tmp_path / "squad2" / "dev_ans.jsonl"
    assert answers_file(tmp_path / "t" / "dev.jsonl", "jsonl") is None
    beside.write_text('["ann", "Ann"]\n')
    got = parse_split(path.read_bytes(), path, "squad2", "dev", "unifiedqa_tsv", None, answers=beside.read_bytes())
    assert got == read_tsv(path, "squad2", "dev") and got[0].answers == ("ann", "Ann")
    with pytest.raises(ValueError, match="'jsonl' has no answers file"):
        parse_split(jsonl(GOOD), Path("f"), "trivia", "dev", "jsonl", None, answers=b"[]\n")


def test_format_options_round_trips_through_parse_options():
    options = (("a", "ice"), ("b", "the Sun"), ("c", "snow"))
    assert format_options(options) == "(A) ice (B) the Sun (C) snow"
    assert parse_options(format_options(options)) == options


# ---------------------------------------------------------------- JSONL: fields


def test_jsonl_example_equals_tsv_example_for_the_same_content(small_data, tmp_path):
    for dataset in SYNTHETIC:
        path = split_file(small_data, dataset, "train", "unifiedqa_tsv")
        expected = read_tsv(path, dataset, "train")
        lines = [
            {"question": ex.question, "context": ex.context, "options": [text for _, text in ex.options] or None,
             "answers": list(ex.answers), "format": ex.format}
            for ex in expected
        ]
        got = parse_split(jsonl(*lines), tmp_path / "x.jsonl", dataset, "train", "jsonl", None)
        # Only line numbers differ: the TSV file spreads a merged example over several lines.
        assert got == [dataclasses.replace(ex, line=n) for n, ex in enumerate(expected, start=1)]


def test_jsonl_inference_recovers_the_format_of_synthetic_yes_no_mc_and_extractive_data(small_data):
    for dataset in ("synthetic_yes_no", "synthetic_multiple_choice", "synthetic_extractive"):
        examples = read_tsv(split_file(small_data, dataset, "train", "unifiedqa_tsv"), dataset, "train")
        lines = [
            {"question": ex.question, "context": ex.context, "answers": list(ex.answers)}
            | ({"options": [text for _, text in ex.options]} if ex.options else {})
            for ex in examples
        ]
        assert {ex.format for ex in parse(jsonl(*lines), dataset=dataset)} == {DATASET_FORMATS[dataset]}


@pytest.mark.parametrize(
    "line, expected",
    [
        ({"question": "q?", "options": ["yes", "no"], "answers": ["yes"]}, "multiple_choice"),
        ({"question": "q?", "answers": ["Yes", "NO"]}, "yes_no"),
        ({"question": "q?", "context": "It is yes.", "answers": ["yes"]}, "yes_no"),
        ({"question": "q?", "context": "Paris is in France.", "answers": ["Paris", "France"]}, "extractive"),
        ({"question": "q?", "context": "Paris is in France.", "answers": ["Paris", "Lyon"]}, "abstractive"),
        ({"question": "q?", "context": "Paris is in France.", "answers": ["paris"]}, "abstractive"),
        ({"question": "q?", "answers": ["Paris"]}, "abstractive"),
        ({"question": "q?", "context": "", "answers": ["Paris"]}, "abstractive"),
        ({"question": "q?", "context": "Paris is in France.", "answers": ["Paris"], "format": "abstractive"}, "abstractive"),
        ({"question": "q?", "answers": ["yes"], "format": "extractive"}, "extractive"),
    ],
    ids=["options", "yes-no-any-case", "yes-no-before-extractive", "all-in-context", "one-not-in-context",
         "case-sensitive-span", "no-context", "empty-context", "explicit-abstractive", "explicit-extractive"],
)
def test_jsonl_format_inference_rule_and_explicit_format(line, expected):
    [example] = parse(jsonl(line))
    assert example.format == expected


def test_jsonl_builds_the_unifiedqa_input_from_question_options_and_context():
    line = {"question": " Which is warm? ", "options": ["ice", " the Sun", "snow"], "context": "Pick one.",
            "answers": ["the Sun"]}
    [ex] = parse(jsonl(line))
    assert ex.question == "Which is warm?"
    assert ex.options == (("a", "ice"), ("b", "the Sun"), ("c", "snow"))
    assert ex.context == "Pick one."
    assert ex.input == "Which is warm?\n(A) ice (B) the Sun (C) snow\nPick one."


def test_jsonl_answers_are_stripped_and_deduplicated_in_order():
    [ex] = parse(jsonl({"question": "q?", "answers": ["b", " a ", "b", "a", "c"]}))
    assert ex.answers == ("b", "a", "c")


def test_jsonl_ids_default_to_dataset_split_index_and_lines_count_blank_lines():
    data = jsonl("", GOOD, "   ", GOOD | {"id": "mine"}, GOOD)
    examples = parse(data, dataset="trivia", split="train")
    assert [(ex.id, ex.line) for ex in examples] == [("trivia/train/0", 2), ("mine", 4), ("trivia/train/2", 5)]
    assert {(ex.dataset, ex.split) for ex in examples} == {("trivia", "train")}


def test_jsonl_dataset_key_renames_the_example_dataset_but_not_the_default_id():
    [ex] = parse(jsonl(GOOD | {"dataset": "geo.v2"}), dataset="trivia")
    assert (ex.dataset, ex.id) == ("geo.v2", "trivia/dev/0")


def test_jsonl_null_optional_fields_count_as_absent():
    nulls = {"context": None, "options": None, "format": None, "dataset": None, "id": None}
    [ex] = parse(jsonl(GOOD | nulls))
    assert (ex.context, ex.options, ex.format, ex.dataset, ex.id) == ("", (), "abstractive", "trivia", "trivia/dev/0")


def test_jsonl_accepts_byte_order_mark_crlf_and_missing_final_newline():
    data = b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\r\n" + json.dumps(GOOD | {"id": "b"}).encode()
    assert [ex.line for ex in parse(data)] == [1, 2]


def test_jsonl_dataset_problem_rejects_names_that_are_not_safe_folder_names():
    reader = READERS.get("jsonl")
    assert reader.dataset_problem("trivia") is None and reader.dataset_problem("my-set_1.v2") is None
    for bad in ("", "..", ".hidden", "a/b", "-x", "a b", "x" * 129):
        assert "not a safe folder name" in reader.dataset_problem(bad)


# ---------------------------------------------------------------- JSONL: bad input


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"question": "q?", "answers": ["a"]', "invalid JSON: Expecting ',' delimiter at column 36"),
        ('["q?", "a"]', "expected a JSON object {...}, got list"),
        ({"question": "q?"}, 'missing answers: every line needs "answers": ["..."]'),
        ({"question": "q?", "answers": "Paris"}, "answers must be a list of strings, got str"),
        ({"question": "q?", "answers": []}, "answers is empty: give at least one reference answer"),
        ({"question": "q?", "answers": ["a", 3]}, "answers[1] must be a string, got int"),
        ({"question": "q?", "answers": ["a", "  "]}, "answers[1] is empty"),
        ({"answers": ["a"]}, "missing question: every line needs a non-empty 'question' string"),
        ({"question": " ", "answers": ["a"]}, "question is empty"),
        ({"question": ["q?"], "answers": ["a"]}, "question must be a string, got list"),
        ({"question": "q?", "context": 3.5, "answers": ["a"]}, "context must be a string, got float"),
        ({"question": "q?", "options": "a, b", "answers": ["a"]}, "options must be a list of strings, got str"),
        ({"question": "q?", "options": ["a"], "answers": ["a"]}, "options must list at least 2 choices, got 1"),
        ({"question": "q?", "options": ["a", ""], "answers": ["a"]}, "options[1] is empty"),
        ({"question": "q?", "options": ["a", "b", "a"], "answers": ["a"]}, "options repeat 'a'"),
        ({"question": "q?", "options": [str(i) for i in range(27)], "answers": ["1"]}, "options must list at most 26 choices (a-z), got 27"),
        ({"question": "q?", "options": ["a", "b"], "answers": ["c"]}, "answer 'c' is not one of the options ['a', 'b']"),
        ({"question": "q?", "options": ["a", "b"], "answers": ["A"]}, "answer 'A' is not one of the options"),
        ({"question": "q?", "answers": ["a"], "format": "multiple_choice"}, "format multiple_choice needs options"),
        ({"question": "q?", "options": ["yes", "no"], "answers": ["yes"], "format": "yes_no"},
         "options are given but format is 'yes_no'; only multiple_choice has options"),
        ({"question": "q?", "answers": ["a"], "format": "boolean"},
         "unknown format 'boolean'; expected one of: yes_no, multiple_choice, extractive, abstractive"),
        ({"question": "q?", "answer": ["a"], "answers": ["a"]}, "unknown key 'answer' (did you mean 'answers'?)"),
        ('{"question": "q?", "answers": ["a"], "answers": ["b"]}', "duplicate key 'answers' in one object"),
        ({"question": "q?", "answers": ["a"], "dataset": "../up"}, "dataset name '../up' is not a safe folder name"),
        ({"question": "q?", "answers": ["a"], "id": ""}, "id is empty"),
        ({"question": "q?", "answers": ["a"], "id": 7}, "id must be a string, got int"),
        ("null", "expected a JSON object {...}, got null"),
    ],
)
def test_jsonl_bad_line_is_reported_at_its_file_and_line(line, message):
    [problem] = problems_of(jsonl(GOOD, line, GOOD | {"id": "last"}))
    assert problem.startswith(f"{Path('d/trivia/dev.jsonl')}:2: {message}"), problem


def test_jsonl_missing_answers_reported_at_its_line():
    assert problems_of(jsonl(GOOD, GOOD, {"question": "q?"}), path=Path("data/t/dev.jsonl")) == [
        f"{Path('data/t/dev.jsonl')}:3: missing answers: every line needs \"answers\": [\"...\"], a list of reference answers"
    ]


def test_jsonl_duplicate_id_is_reported_at_the_later_line_naming_the_first():
    data = jsonl(GOOD | {"id": "x"}, GOOD, GOOD | {"id": "x"}, GOOD | {"id": "trivia/dev/1"})
    assert problems_of(data) == [
        f"{Path('d/trivia/dev.jsonl')}:3: duplicate id 'x'; first used on line 1",
        f"{Path('d/trivia/dev.jsonl')}:4: duplicate id 'trivia/dev/1'; first used on line 2",
    ]


def test_jsonl_invalid_utf8_is_reported_at_the_line_of_the_bad_byte():
    data = jsonl(GOOD) + b'{"question": "caf\xe9?", "answers": ["a"]}\n' + jsonl(GOOD | {"id": "b"})
    assert problems_of(data) == [f"{Path('d/trivia/dev.jsonl')}:2: not valid UTF-8 (byte 0xe9 at column 18)"]


@pytest.mark.parametrize("data", [b"", b"\n\n  \n"], ids=["empty", "blank-lines-only"])
def test_jsonl_file_without_examples_is_reported_for_the_file(data):
    assert problems_of(data) == [f"{Path('d/trivia/dev.jsonl')}: file has no examples"]


def test_jsonl_every_problem_of_a_file_is_reported_at_once_in_line_order():
    data = jsonl(
        GOOD,
        "{oops",
        {"question": "", "answers": "a", "colour": "red"},
        GOOD,
        ["not", "an", "object"],
    ) + b'{"question": "\xff"}\n'
    lines = [problem.split(": ", 1)[0] for problem in problems_of(data)]
    assert lines == [f"{Path('d/trivia/dev.jsonl')}:{n}" for n in (2, 3, 3, 3, 5, 6)]
    text = "\n".join(problems_of(data))
    for message in ("invalid JSON", "unknown key 'colour'", "question is empty", "answers must be a list",
                    "got list", "not valid UTF-8"):
        assert message in text


# ---------------------------------------------------------------- shipped data


def test_shipped_custom_data_parses_cleanly_with_every_format():
    root = REPO / "data" / "custom"
    formats = set()
    for split, at_least in (("train", 20), ("dev", 6)):
        path = split_file(root, "trivia", split, "jsonl")
        examples = parse_split(path.read_bytes(), path, "trivia", split, "jsonl", None)
        assert len(examples) >= at_least
        formats |= {ex.format for ex in examples}
    assert formats == set(FORMATS)


def test_example_jsonl_manifest_points_at_the_shipped_data():
    manifest = REPO / "manifests" / "examples" / "data" / "jsonl.yaml"
    data = yaml.safe_load(manifest.read_text())["data"]
    assert data["format"] == "jsonl"
    root = (manifest.parent / data["root"]).resolve()
    assert root == (REPO / "data" / "custom").resolve()
    for dataset in data["datasets"]:
        assert READERS.get("jsonl").dataset_problem(dataset) is None
        assert split_file(root, dataset, "dev", "jsonl").is_file()

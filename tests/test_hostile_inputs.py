"""Hostile inputs (issue 15): every one ends in exit 2 and one line naming where the mistake is, or is
accepted where it is valid — never a traceback, a hang or a retryable exit 3."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO
from runner.cli import main

DATA = REPO / "data" / "synthetic"

BASE = f"""\
name: hostile
model:
  package: gemma3-270m
data:
  root: {DATA}
  datasets: [synthetic_yes_no]
method:
  kind: lora
"""
# Lines of BASE: 1 name, 2 model, 3 package, 4 data, 5 root, 6 datasets, 7 method, 8 kind; additions start at 9.


def _nested_aliases() -> str:
    """A "billion laughs" document: 9 levels of 9 aliases, 9^9 values once expanded, ~360 bytes."""
    lines = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for previous, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{previous}"] * 9) + "]")
    return "\n".join(lines) + "\n"


# (case, text appended to BASE or a whole document, line, field, message fragment); line None: exit 0.
MANIFEST_CASES = [
    ("nested_aliases_rejected", _nested_aliases(), 1, None, "aliases (*name) expand this document past 100,000 values"),
    ("alias_containing_itself_rejected", "a: &a [*a]\n", 1, None, "refers to a node that contains it"),
    ("deep_flow_nesting_rejected", "a: " + "[" * 50_000 + "]" * 50_000 + "\n", 1, None, "nested deeper than 100 levels"),
    ("deep_block_nesting_rejected", "".join(" " * i + "a:\n" for i in range(300)), 101, None, "nested deeper than 100 levels"),
    ("python_tag_rejected", "description: !!python/object/apply:os.system [echo]\n", 9, "description", "is not supported here"),
    ("sexagesimal_number_rejected", "eval:\n  shard_size: 1:30\n", 10, "eval.shard_size", "1:30 is 90 in YAML 1.1 (base 60)"),
    ("leading_zero_number_rejected", "eval:\n  shard_size: 010\n", 10, "eval.shard_size", "010 has a leading zero"),
    ("yes_is_text_in_a_string_field", "description: yes\n", None, None, None),
    ("yes_is_true_in_a_bool_field", "train:\n  gradient_checkpointing: yes\n", None, None, None),
    ("date_is_text_in_a_string_field", "description: 2026-11-26\n", None, None, None),
    ("exponent_without_dot_is_a_number", "train:\n  steps: 1e3\n  learning_rate: 1e-4\n", None, None, None),
    ("lora_alpha_inf_rejected", "  alpha: .inf\n", 9, "method.alpha", "must be a finite number"),
    ("lora_alpha_huge_rejected", "  alpha: 1e30\n", 9, "method.alpha", "less than or equal to 16384"),
    ("epochs_inf_rejected", "train:\n  epochs: .inf\n", 10, "train.epochs", "must be a finite number"),
    ("steps_1e30_rejected", "train:\n  steps: 1e30\n", 10, "train.steps", "far too large"),
    ("steps_above_ten_million_rejected", "train:\n  steps: 10000001\n", 10, "train.steps", "less than or equal to 10000000"),
    ("learning_rate_nan_rejected", "train:\n  learning_rate: .nan\n", 10, "train.learning_rate", "must be a finite number"),
    ("learning_rate_negative_rejected", "train:\n  learning_rate: -1e-4\n", 10, "train.learning_rate", "greater than 0"),
    ("weight_decay_inf_rejected", "train:\n  weight_decay: .inf\n", 10, "train.weight_decay", "must be a finite number"),
    ("train_seed_above_2_32_rejected", "train:\n  seed: 4294967296\n", 10, "train.seed", "less than or equal to 4294967295"),
    ("train_seed_negative_rejected", "train:\n  seed: -1\n", 10, "train.seed", "greater than or equal to 0"),
    ("icl_seed_huge_rejected", "icl:\n  seed: 99999999999999999999999\n", 10, "icl.seed", "less than or equal to 4294967295"),
    ("decoding_seed_above_2_32_rejected", "decoding:\n  kind: sample\n  seed: 18446744073709551617\n", 11, "decoding.seed", "less than or equal to 4294967295"),
    ("sample_temperature_inf_rejected", "decoding:\n  kind: sample\n  temperature: .inf\n", 11, "decoding.temperature", "must be a finite number"),
    ("train_batch_size_absurd_rejected", "train:\n  batch_size: 1000000000\n", 10, "train.batch_size", "less than or equal to 4096"),
    ("decoding_batch_size_absurd_rejected", "decoding:\n  batch_size: 1000000000\n", 10, "decoding.batch_size", "less than or equal to 4096"),
    ("shard_size_absurd_rejected", "eval:\n  shard_size: 1e12\n", 10, "eval.shard_size", "less than or equal to 1000000"),
    ("shard_size_true_rejected", "eval:\n  shard_size: true\n", 10, "eval.shard_size", "should be a valid integer"),
    ("learning_rate_false_rejected", "train:\n  learning_rate: false\n", 10, "train.learning_rate", "should be a valid number"),
    ("max_eval_examples_yes_rejected", None, 7, "data.max_eval_examples", "should be a valid integer"),
    ("adalora_tfinal_huge_rejected", None, 10, "method.tfinal", "less than or equal to 10000000"),
    ("dataset_listed_twice_rejected", None, 6, "data.datasets", "synthetic_yes_no listed more than once"),
    ("eval_split_path_rejected", None, 7, "data.eval_split", "must be a plain file name"),
    ("train_split_path_rejected", None, 7, "data.train_split", "must be a plain file name"),
    ("template_format_spec_rejected", "icl:\n  example_template: '{question:>99999999999}'\n", 10, "icl.example_template", "{question:>99999999999}: format specs are not allowed"),
    ("template_conversion_rejected", "icl:\n  example_template: '{question!r}'\n", 10, "icl.example_template", "{question!r}: conversions are not allowed"),
    ("template_attribute_access_rejected", "icl:\n  example_template: '{question.__class__}'\n", 10, "icl.example_template", "attribute and index access are not allowed"),
    ("template_index_access_rejected", "icl:\n  example_template: '{question[0]}'\n", 10, "icl.example_template", "attribute and index access are not allowed"),
]

SPECIAL = {
    "adalora_tfinal_huge_rejected": BASE.replace("kind: lora", "kind: adalora\n  tinit: 0\n  tfinal: 99999999999"),
    "dataset_listed_twice_rejected": BASE.replace("[synthetic_yes_no]", "[synthetic_yes_no, synthetic_yes_no]"),
    "eval_split_path_rejected": BASE.replace("[synthetic_yes_no]\n", "[synthetic_yes_no]\n  eval_split: ../synthetic_yes_no/train\n"),
    "train_split_path_rejected": BASE.replace("[synthetic_yes_no]\n", "[synthetic_yes_no]\n  train_split: /etc/passwd\n"),
    "max_eval_examples_yes_rejected": BASE.replace("[synthetic_yes_no]\n", "[synthetic_yes_no]\n  max_eval_examples: yes\n"),
}


def _document(case: str, text: str | None) -> str:
    if case in SPECIAL:
        return SPECIAL[case]
    # Whole documents (aliases, nesting) stand alone; everything else extends the valid BASE.
    return text if case in {"nested_aliases_rejected", "alias_containing_itself_rejected", "deep_flow_nesting_rejected", "deep_block_nesting_rejected"} else BASE + text


@pytest.mark.parametrize(("case", "text", "line", "field", "message"), MANIFEST_CASES, ids=[c[0] for c in MANIFEST_CASES])
def test_hostile_manifest_is_one_line_at_its_place_or_accepted(tmp_path, capsys, case, text, line, field, message):
    path = tmp_path / f"{case}.yaml"
    path.write_text(_document(case, text))
    started = time.perf_counter()
    code = main(["validate", str(path)])
    elapsed = time.perf_counter() - started
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert elapsed < 1.0, f"validate took {elapsed:.2f} s"
    if line is None:
        assert code == 0, err
        return
    assert code == 2
    problems = [l for l in err.splitlines() if l.startswith(str(path))]
    assert len(problems) == 1, err
    prefix = f"{path}:{line}: " + (f"{field}: " if field else "")
    assert problems[0].startswith(prefix) and message in problems[0], err


def test_nested_alias_manifest_is_rejected_in_under_a_second_by_a_fresh_process(tmp_path):
    import subprocess

    path = tmp_path / "laughs.yaml"
    path.write_text("name: laughs\n" + _nested_aliases())
    assert len(path.read_bytes()) < 420
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "runner", "validate", str(path)], cwd=REPO, capture_output=True, text=True, timeout=30)
    # A fresh interpreter needs ~0.3 s to start and import the validation code; the check itself is linear.
    assert time.perf_counter() - started < 1.5
    assert result.returncode == 2 and "expand this document past" in result.stderr and "Traceback" not in result.stderr


def test_expanded_size_of_nested_aliases_takes_linear_time():
    import yaml

    from runner.yaml_lines import Yaml12Loader, expanded_size

    # 30 levels of 9 aliases is 9^30 values expanded; counting must still take milliseconds.
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"] + [
        f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 31)
    ]
    root = yaml.compose("\n".join(lines), Loader=Yaml12Loader)
    started = time.perf_counter()
    assert expanded_size(root) == 100_001
    assert time.perf_counter() - started < 0.1


# --- data files: control bytes ----------------------------------------------------------------


def _tsv_data(tmp_path: Path, dev: bytes) -> Path:
    root = tmp_path / "data"
    (root / "synthetic_yes_no").mkdir(parents=True)
    (root / "synthetic_yes_no" / "train.tsv").write_bytes((DATA / "synthetic_yes_no" / "train.tsv").read_bytes())
    (root / "synthetic_yes_no" / "dev.tsv").write_bytes(dev)
    return root


def _jsonl_data(tmp_path: Path, dev: bytes) -> Path:
    root = tmp_path / "data"
    (root / "mine").mkdir(parents=True)
    (root / "mine" / "train.jsonl").write_text('{"question": "Is it?", "answers": ["yes"]}\n{"question": "Is it not?", "answers": ["no"]}\n')
    (root / "mine" / "dev.jsonl").write_bytes(dev)
    return root


GOOD_TSV = (DATA / "synthetic_yes_no" / "dev.tsv").read_bytes().split(b"\n")
ROW = b'{"question": "Q?", "answers": ["yes"]}'

# (case, format, dev file bytes, line, message fragment); line None: accepted.
DATA_CASES = [
    ("tsv_nul_byte_rejected", "tsv", b"\n".join([GOOD_TSV[0], GOOD_TSV[1][:4] + b"\x00" + GOOD_TSV[1][4:], *GOOD_TSV[2:]]), 2, "NUL (byte 0x00) at column 5"),
    ("tsv_escape_sequence_rejected", "tsv", b"\n".join([GOOD_TSV[0], GOOD_TSV[1], b"\x1b[31m" + GOOD_TSV[2], *GOOD_TSV[3:]]), 3, "escape (byte 0x1b) at column 1"),
    ("tsv_lone_carriage_return_rejected", "tsv", b"\n".join([GOOD_TSV[0][:3] + b"\r" + GOOD_TSV[0][3:], *GOOD_TSV[1:]]), 1, "carriage return (byte 0x0d)"),
    ("tsv_crlf_line_ends_accepted", "tsv", b"\r\n".join(GOOD_TSV), None, None),
    ("jsonl_raw_control_byte_rejected", "jsonl", ROW + b"\n" + ROW.replace(b"Q?", b"Q\x01?") + b"\n", 2, "control character (byte 0x01)"),
    ("jsonl_escaped_nul_rejected", "jsonl", ROW + b"\n" + ROW.replace(b"Q?", b"Q\\u0000?") + b"\n", 2, "question holds the control character U+0000"),
    ("jsonl_escaped_bell_in_answers_rejected", "jsonl", ROW.replace(b'"yes"', b'"ye\\u0007s"') + b"\n", 1, "answers[0] holds the control character U+0007"),
    ("jsonl_tab_and_newline_escapes_accepted", "jsonl", ROW.replace(b"Q?", b"Q\\tx\\ny?") + b"\r\n", None, None),
]


@pytest.mark.parametrize(("case", "fmt", "dev", "line", "message"), DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_control_bytes_in_data_rows_are_rejected_at_their_line(tmp_path, capsys, case, fmt, dev, line, message):
    if fmt == "tsv":
        root, datasets, data_format, dev_file = _tsv_data(tmp_path, dev), "[synthetic_yes_no]", "unifiedqa_tsv", "synthetic_yes_no/dev.tsv"
    else:
        root, datasets, data_format, dev_file = _jsonl_data(tmp_path, dev), "[mine]", "jsonl", "mine/dev.jsonl"
    manifest = tmp_path / "m.yaml"
    manifest.write_text(BASE.replace(str(DATA), str(root)).replace("[synthetic_yes_no]", datasets).replace("data:\n", f"data:\n  format: {data_format}\n"))
    code = main(["validate", str(manifest)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    if line is None:
        assert code == 0, err
        return
    assert code == 2
    problems = [l for l in err.splitlines() if "dev." in l]
    assert len(problems) == 1 and problems[0].startswith(f"{root / dev_file}:{line}: ") and message in problems[0], err


# --- model folders ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from tiny_models import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("model") / "good", "llama", ["the quick brown fox jumps over the lazy dog"] * 20)


def _flip_header_byte(folder: Path) -> None:
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[20] ^= 0xFF  # inside the JSON header that says where every tensor is
    (folder / "model.safetensors").write_bytes(bytes(data))


MODEL_CASES = [
    ("config_json_empty_object", lambda f: (f / "config.json").write_text("{}"), "Unrecognized model"),
    ("config_json_not_json", lambda f: (f / "config.json").write_text("{oops"), "not a valid JSON file"),
    ("no_tokenizer_files", lambda f: [p.unlink() for p in f.glob("tokenizer*")], "cannot load the tokenizer of"),
    ("tokenizer_json_garbage", lambda f: (f / "tokenizer.json").write_text("{garbage"), "cannot load the tokenizer of"),
    ("safetensors_truncated", lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:1000]), "invalid header length"),
    ("safetensors_header_bit_flipped", _flip_header_byte, "Error while deserializing header"),
    ("no_weights", lambda f: (f / "model.safetensors").unlink(), "no file named model.safetensors"),
]


@pytest.mark.parametrize(("case", "damage", "message"), MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_broken_model_folder_is_a_user_error_naming_the_folder(tmp_path, tiny_model, case, damage, message):
    import shutil

    from runner.errors import UserError
    from runner.model_spec import ModelSpec
    from runner.models import load_pretrained

    folder = tmp_path / case
    shutil.copytree(tiny_model, folder)
    damage(folder)
    with pytest.raises(UserError) as caught:
        load_pretrained(ModelSpec(path=str(folder)), tmp_path)
    text = str(caught.value)
    assert "\n" not in text and str(folder) in text and message in text, text


@pytest.mark.parametrize("case", ["config_json_empty_object", "config_json_not_json"])
def test_broken_config_json_is_reported_by_validate(tmp_path, capsys, tiny_model, case):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    (folder / "config.json").write_text("{}" if case == "config_json_empty_object" else "{oops")
    manifest = tmp_path / "m.yaml"
    manifest.write_text(BASE.replace("package: gemma3-270m", f"path: {folder}"))
    assert main(["validate", str(manifest)]) == 2
    err = capsys.readouterr().err
    expected = "has no model_type" if case == "config_json_empty_object" else "is not a JSON file"
    assert f"{manifest}:3: model.path: {folder / 'config.json'} {expected}" in err, err


@pytest.mark.parametrize("damage", [lambda b: b[:100_000], lambda b: b"GGUF" + b"\xff" * 60, lambda b: b"not a gguf"], ids=["truncated", "garbage_after_magic", "no_magic"])
def test_broken_packaged_gguf_is_a_user_error_naming_the_file(tmp_path, monkeypatch, damage):
    from runner import models
    from runner.errors import UserError
    from runner.model_spec import ModelSpec

    real = models._smollm2_gguf()
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(damage(real.open("rb").read(200_000)))
    name = f"broken-{tmp_path.name}"  # the GGUF location is cached per name
    monkeypatch.setitem(models.PACKAGED_MODELS, name, models.PackagedModel(lambda: broken, "pip install broken", instruction_tuned=False))
    monkeypatch.setenv("QABENCH_MODEL_CACHE", str(tmp_path / "cache"))
    with pytest.raises(UserError) as caught:
        models.locate_model(ModelSpec.model_construct(package=name), tmp_path)
    text = str(caught.value)
    assert "\n" not in text and str(broken) in text and "pip install broken --force-reinstall" in text, text


# --- stored objects of a finished run -------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "manifest", "metrics", "damaged"),
    [
        ("empty_stored_manifest", b"", b"{}", "manifest.yaml is damaged (empty)"),
        ("stored_manifest_not_yaml", b"eval: [unclosed", b"{}", "manifest.yaml is damaged (not YAML"),
        ("truncated_metrics_json", b"eval:\n  metrics: [exact_match]\n", b'{"overall": {"n": 3, "exa', "metrics.json is damaged (not JSON"),
        ("metrics_json_a_list", b"eval:\n  metrics: [exact_match]\n", b"[1, 2]", "metrics.json is damaged (not a mapping)"),
    ],
)
def test_damaged_stored_object_of_a_run_is_one_line_naming_it(tmp_path, case, manifest, metrics, damaged):
    from runner.errors import StorageError
    from runner.score import rescore

    run = tmp_path / "runs" / "hostile" / "0123abcd"
    run.mkdir(parents=True)
    (run / "manifest.yaml").write_bytes(manifest)
    (run / "metrics.json").write_bytes(metrics)
    with pytest.raises(StorageError) as caught:
        rescore(str(run))
    text = str(caught.value)
    assert "\n" not in text and f"hostile/0123abcd/{damaged}" in text, text


def test_runner_score_of_a_run_with_a_damaged_manifest_ends_without_a_traceback(tmp_path, capsys):
    run = tmp_path / "runs" / "hostile" / "0123abcd"
    run.mkdir(parents=True)
    (run / "manifest.yaml").write_bytes(b"")
    (run / "metrics.json").write_text(json.dumps({"overall": {"n": 0}}))
    (run / "_SUCCESS").write_text("{}")
    code = main(["score", str(run)])
    out, err = capsys.readouterr()
    assert code in (2, 3, 4) and "Traceback" not in out + err and err.strip(), err


# --- analysis report --out -------------------------------------------------------------------------


@pytest.mark.parametrize("below", ["", "report"], ids=["out_is_a_file", "out_under_a_file"])
def test_report_out_at_or_under_an_existing_file_is_exit_2(tmp_path, capsys, below):
    from analysis.cli import main as analysis_main

    storage = tmp_path / "runs"
    storage.mkdir()
    (tmp_path / "taken").write_text("a file")
    out = tmp_path / "taken" / below if below else tmp_path / "taken"
    assert analysis_main(["report", str(storage), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--out {out}: {tmp_path / 'taken'} is a file, not a folder" in err and "Traceback" not in err

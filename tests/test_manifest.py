"""Manifest validation: every mistake reported at its line, at once, without a traceback."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from runner.cli import main
from runner.manifest import load_manifest

BAD = REPO / "tests" / "bad_manifests"
EXPECT = re.compile(rb"^# expect: (\d+) \| ([^|]*) \| (.+)$", re.M)


def _expectations(path: Path) -> list[tuple[int, str, str]]:
    return [(int(line), field.strip().decode(), text.strip().decode()) for line, field, text in EXPECT.findall(path.read_bytes())]


def test_shipped_manifests_are_valid(capsys):
    assert main(["validate", str(REPO / "manifests")]) == 0


def test_bad_manifest_folder_covers_at_least_twelve_kinds_of_mistake():
    files = sorted(BAD.glob("*.yaml"))
    assert len(files) >= 12
    assert all(_expectations(f) for f in files), "every bad manifest states what it expects"


def test_every_bad_manifest_problem_is_reported_at_its_line_without_traceback():
    result = subprocess.run(
        [sys.executable, "-m", "runner", "validate", "tests/bad_manifests"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.splitlines()
    for file in sorted(BAD.glob("*.yaml")):
        shown = f"tests/bad_manifests/{file.name}"
        for line, field, text in _expectations(file):
            prefix = f"{shown}:{line}: " + (f"{field}: " if field else "")
            assert any(l.startswith(prefix) and text in l for l in lines), f"missing {prefix}…{text}\n" + result.stderr


def test_validation_does_not_import_torch():
    code = (
        "import sys; from runner.cli import main; rc = main(['validate', 'manifests']);"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'; sys.exit(rc)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_validate_reports_a_missing_path_and_exits_2(capsys):
    assert main(["validate", "no/such/manifest.yaml"]) == 2
    assert "no/such/manifest.yaml: no such file or folder" in capsys.readouterr().err


def test_manifest_reference_is_generated_from_the_schema():
    result = subprocess.run([sys.executable, "-m", "runner", "schema", "--markdown"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0
    assert (REPO / "manifests" / "README.md").read_text() == result.stdout, "run `just docs`"
    for field in ("learning_rate", "max_new_tokens", "batch_size", "target_modules", "shard_size", "package"):
        assert f"`{field}`" in result.stdout


def test_json_schema_lists_every_registered_method():
    import json

    result = subprocess.run([sys.executable, "-m", "runner", "schema"], cwd=REPO, capture_output=True, text=True)
    schema = json.loads(result.stdout)
    assert {"LoraSpec", "NoneSpec", "GreedySpec"} <= set(schema["$defs"])


def test_manifest_is_frozen(tiny_manifest):
    manifest = load_manifest(tiny_manifest("frozen")).manifest
    with pytest.raises(Exception):
        manifest.name = "other"  # type: ignore[misc]


def _stage_digests(path: Path) -> tuple[str, str]:
    """(training digest, evaluation digest) of a manifest that trains, as runner.identity computes them."""
    from runner.context import read_data
    from runner.identity import evaluation_digest, evaluation_request, training_digest, training_request
    from runner.models import identify_model

    loaded = load_manifest(path)
    data = read_data(loaded)
    model = identify_model(loaded.manifest.model, loaded.base_dir)
    training = training_digest(training_request(loaded.manifest), model.fingerprint, data.train_hashes)
    return training, evaluation_digest(evaluation_request(loaded.manifest), {"training": training}, None, data.eval_hashes)


def test_stage_digests_follow_what_a_stage_produces_not_where_or_how_it_is_described(tmp_path, small_data, tiny_models):
    from conftest import SYNTHETIC, write_manifest

    def make(folder: Path, **overrides) -> Path:
        # Copies, not links: the digests must not depend on the absolute paths the files are read from.
        for source, name in ((small_data, "data"), (tiny_models["llama"], "model")):
            if not (folder / name).exists():
                shutil.copytree(source, folder / name)
        sections = {
            "model": {"path": "model"},
            "data": {"root": "data", "datasets": SYNTHETIC},
            "method": {"kind": "lora"},
            "train": {"steps": 4, "batch_size": 4},
            "decoding": {"kind": "greedy", "max_new_tokens": 6},
            **overrides,
        }
        return write_manifest(folder, "digest", **sections)

    training, evaluation = _stage_digests(make(tmp_path / "first"))
    moved = make(tmp_path / "second", output={"storage": "/elsewhere"}, description="notes", eval={"metrics": ["exact_match"]})
    assert _stage_digests(moved) == (training, evaluation)

    retrained = _stage_digests(make(tmp_path / "first", train={"steps": 5, "batch_size": 4}))
    assert retrained[0] != training and retrained[1] != evaluation, "a new training is a new evaluation too"

    redecoded = _stage_digests(make(tmp_path / "first", decoding={"kind": "greedy", "max_new_tokens": 7}))
    assert redecoded[0] == training and redecoded[1] != evaluation, "only the evaluation changes: it reuses the training"


def test_decoding_kind_defaults_to_greedy(tiny_manifest):
    manifest = load_manifest(tiny_manifest("default-decoding", decoding={"max_new_tokens": 5})).manifest
    assert manifest.decoding.kind == "greedy" and manifest.decoding.max_new_tokens == 5


def test_official_data_not_yet_fetched_passes_validation_with_a_note_and_stops_the_run_with_exit_2(tmp_path, tiny_models, capsys):
    from conftest import write_manifest

    manifest = write_manifest(
        tmp_path, "unfetched", model={"path": str(tiny_models["llama"])}, data={"root": str(tmp_path / "unifiedqa"), "datasets": ["boolq"]},
        method={"kind": "none"},
    )
    capsys.readouterr()
    assert main(["validate", str(manifest)]) == 0
    assert "python -m runner data fetch boolq --to" in capsys.readouterr().err
    assert main(["run", str(manifest), "--storage", str(tmp_path / "runs")]) == 2
    assert "not fetched yet" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.parquet"))

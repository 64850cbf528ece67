"""`devices: 2` runs two data-parallel processes under torchrun (gloo on this CPU-only machine)."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq

from conftest import REPO, stage_folders


def test_two_data_parallel_processes_train_once_split_the_shards_and_complete_one_run(tiny_manifest, tmp_path):
    train = {"steps": 6, "batch_size": 2, "learning_rate": 1e-3, "save_steps": 3, "logging_steps": 1, "heldout_examples": 4}
    manifest = tiny_manifest("two-ranks", method={"kind": "lora", "r": 4, "alpha": 8, "target_modules": "attention"}, train=train,
                             eval={"shard_size": 5}, devices=2)
    storage = tmp_path / "runs"
    result = subprocess.run([sys.executable, "-m", "runner", "run", str(manifest), "--storage", str(storage)],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "data parallel over 2 processes" in result.stdout
    evaluation, training = stage_folders(manifest, storage)
    assert (training / "_SUCCESS").is_file() and (training / "adapter" / "adapter_model.safetensors").is_file()
    steps = [json.loads(line)["step"] for line in (training / "train_log.jsonl").read_text().splitlines() if "loss" in json.loads(line)]
    assert steps == [1, 2, 3, 4, 5, 6], "one log, written by rank 0 only"
    assert sorted(p.name for p in (training / "checkpoints").glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    assert all((training / "checkpoints" / c / "qabench_complete").is_file() for c in ("checkpoint-3", "checkpoint-6"))
    assert (evaluation / "_SUCCESS").is_file()
    rows = [r for s in sorted((evaluation / "predictions").glob("*.parquet")) for r in pq.read_table(s, columns=["id"]).to_pylist()]
    assert len(rows) == 24 and len({r["id"] for r in rows}) == 24
    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert metrics["overall"]["n"] == 24 and metrics["training"] == training.name
    # Each rank trained on its own half of every global batch: the counted tokens cover both.
    assert metrics["train"]["real_tokens"] > 0


def test_set_overrides_reach_every_rank_and_name_the_run(tiny_manifest, tmp_path):
    # Each rank reads the manifest itself: without the launcher's `--set`s the ranks would run the
    # manifest as written, under another identity than the one the launcher reports.
    train = {"steps": 6, "batch_size": 2, "learning_rate": 1e-3, "save_steps": 3, "logging_steps": 1, "heldout_examples": 0}
    manifest = tiny_manifest("two-ranks-set", method={"kind": "lora", "r": 4, "alpha": 8, "target_modules": "attention"}, train=train, devices=2)
    overrides = ("train.steps=3", 'decoding.stop=["\\n", "Question:"]')
    storage = tmp_path / "runs"
    command = [sys.executable, "-m", "runner", "run", str(manifest), "--storage", str(storage)]
    for override in overrides:
        command += ["--set", override]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    evaluation, training = stage_folders(manifest, storage, overrides)
    assert (training / "_SUCCESS").is_file() and (evaluation / "_SUCCESS").is_file()
    steps = [json.loads(line)["step"] for line in (training / "train_log.jsonl").read_text().splitlines() if "loss" in json.loads(line)]
    assert steps == [1, 2, 3]
    assert json.loads((evaluation / "provenance.json").read_text())["overrides"] == list(overrides)
    assert not stage_folders(manifest, storage)[0].exists(), "the overrides are part of the run's identity"

"""A run killed anywhere and rerun ends bit-identical to one never interrupted: the kill-point matrix.

Each case runs the manifest in a child process (tests/kill_at.py) that kills itself at one point,
reruns it normally, and compares with one uninterrupted run of the same manifest: the adapter's
weight files byte for byte, train_log.jsonl byte for byte, and every prediction column that is not
a clock reading. Float32 on CPU, LoRA with dropout, held-out evaluation on (before training, every
2 steps, after training): every source of randomness and every stored record is in play.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import seaweed as sw
from conftest import REPO, SYNTHETIC, stage_folders, write_manifest
from runner.cli import main

STEPS = 6
# 4 train examples of each of 4 datasets, 3 held out: 13 in batches of 5 make 3 steps an epoch, so
# the 6 steps span two epochs and checkpoint-4 lies one step into the second.
TRAIN = {"steps": STEPS, "batch_size": 5, "learning_rate": 1e-3, "save_steps": 2, "eval_steps": 2, "heldout_examples": 3, "logging_steps": 3}
LORA = {"kind": "lora", "r": 4, "alpha": 8, "dropout": 0.1, "target_modules": "attention"}
SUMMARY = "qabench_train.json"
# Training-summary fields measured with a clock or a memory probe, or over this session's steps only
# (a resumed run trains, and counts the tokens of, only the steps after its checkpoint).
SESSION_MEASURED = {"seconds", "tokens_per_second", "peak_memory_bytes", "real_tokens", "padded_tokens", "padding_fraction", "final_loss"}
# Prediction columns measured with a clock or a memory probe; every other column must match.
TIMED_COLUMNS = {"batch_seconds", "batch_first_token_seconds", "batch_peak_memory_bytes"}

# (point, N): the N-th arrival at the point kills the run (see tests/kill_at.py). 6 steps with
# checkpoints at 2, 4, 6 and log records at 3 and 6 (a resume from 2 or 4 must carry the sums
# towards the next record); held-out evaluations before training, at 2, 4, 6 and after; 4 shards
# of 3 evaluation examples.
FIXED = {
    "heldout-eval-before-training": ("heldout-eval", 1),
    "heldout-eval-at-step-4": ("heldout-eval", 3),
    "heldout-eval-after-training": ("heldout-eval", 5),
    "between-steps-5-and-6": ("step", 5),
    "mid-checkpoint-4-save": ("checkpoint-save", 2),
    "mid-checkpoint-4-upload": ("checkpoint-upload", 2),
    "between-shards-2-and-3": ("between-shards", 2),
    "mid-shard-3-upload": ("shard-upload", 3),
    "sigterm-after-step-5": ("sigterm", 5),
}
# Seeded random points: the same N on every run of the suite.
RANDOM = {f"random-{seed}-{point}": (point, random.Random(seed).randint(1, top)) for seed, (point, top) in enumerate(
    [("step", STEPS), ("heldout-eval", 5), ("any-write", 12)]
)}
LOCAL_CASES = {**FIXED, **RANDOM}
# Against S3 the points where storage behaves differently from a local folder (uploads, the local
# working copy), plus one random.
S3_CASES = {name: LOCAL_CASES[name] for name in (
    "mid-checkpoint-4-upload", "between-shards-2-and-3", "mid-shard-3-upload", "sigterm-after-step-5", "random-2-any-write",
)}


def _manifest(folder: Path, small_data: Path, tiny_models: dict[str, Path]) -> Path:
    return write_manifest(
        folder,
        "resume",
        model={"path": str(tiny_models["llama"]), "dtype": "float32"},
        data={"root": str(small_data), "datasets": SYNTHETIC, "max_train_examples": 4, "max_eval_examples": 3},
        method=LORA,
        train=TRAIN,
        decoding={"kind": "greedy", "max_new_tokens": 6, "batch_size": 4},
        eval={"shard_size": 3},
    )


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, small_data, tiny_models) -> Path:
    return _manifest(tmp_path_factory.mktemp("manifest"), small_data, tiny_models)


def _outcome(evaluation: Path, training: Path) -> dict:
    """What a run produced, with clock readings and session measurements left out."""
    # Dot-files are the store's own (a folder's checksum list, which covers the summary's bytes).
    files = [p for p in sorted((training / "adapter").rglob("*")) if p.is_file() and not p.name.startswith(".")]
    adapter = {p.relative_to(training).as_posix(): p.read_bytes() for p in files}
    summary = json.loads(adapter.pop(f"adapter/{SUMMARY}"))
    shards = sorted((evaluation / "predictions").glob("shard-*.parquet"))
    predictions = []
    for shard in shards:
        table = pq.read_table(shard)
        predictions += table.select([c for c in table.column_names if c not in TIMED_COLUMNS]).to_pylist()
    return {
        "adapter": adapter,
        "summary": {k: v for k, v in summary.items() if k not in SESSION_MEASURED},
        "train_log": (training / "train_log.jsonl").read_bytes(),
        "shards": [p.name for p in shards],
        "predictions": predictions,
        "complete": (training / "_SUCCESS").is_file() and (evaluation / "_SUCCESS").is_file(),
    }


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, manifest) -> dict:
    storage = tmp_path_factory.mktemp("uninterrupted")
    assert main(["run", str(manifest), "--storage", str(storage)]) == 0
    return _outcome(*stage_folders(manifest, storage))


def _kill_then_rerun(manifest: Path, storage: str, point: str, n: int, env: dict[str, str]) -> None:
    command = [sys.executable, str(REPO / "tests" / "kill_at.py"), point, str(n), "--", "run", str(manifest), "--storage", storage]
    child = subprocess.run(command, cwd=REPO, env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=600)
    expected = 143 if point == "sigterm" else -signal.SIGKILL
    assert child.returncode == expected, f"{point} {n}: exit {child.returncode}\n{child.stderr[-3000:]}"
    assert main(["run", str(manifest), "--storage", storage]) == 0


def _assert_same(resumed: dict, uninterrupted: dict) -> None:
    assert resumed["complete"]
    assert resumed["adapter"].keys() == uninterrupted["adapter"].keys()
    for name, data in uninterrupted["adapter"].items():
        assert resumed["adapter"][name] == data, f"{name} differs"
    assert resumed["summary"] == uninterrupted["summary"]
    assert resumed["train_log"].decode().splitlines() == uninterrupted["train_log"].decode().splitlines()
    assert resumed["shards"] == uninterrupted["shards"]
    assert resumed["predictions"] == uninterrupted["predictions"]


def test_uninterrupted_train_log_has_one_record_per_step_and_no_clock_readings(uninterrupted):
    records = [json.loads(line) for line in uninterrupted["train_log"].decode().splitlines()]
    losses = [r["step"] for r in records if "loss" in r]
    heldout = [r["step"] for r in records if "eval_loss" in r]
    assert losses == [3, 6], "every logging_steps"
    assert heldout == [0, 2, 4, 6, 6], "before training, every eval_steps, after training"
    assert max(r["epoch"] for r in records) == 2, "two epochs: a resume from checkpoint-4 is mid-epoch"
    assert not any(k == "time" or k.endswith(("_runtime", "_per_second", "_time")) for r in records for k in r)


@pytest.mark.parametrize("case", sorted(LOCAL_CASES))
def test_run_killed_and_rerun_is_bit_identical_locally(case, manifest, uninterrupted, tmp_path):
    point, n = LOCAL_CASES[case]
    storage = tmp_path / "storage"
    _kill_then_rerun(manifest, str(storage), point, n, dict(os.environ))
    _assert_same(_outcome(*stage_folders(manifest, storage)), uninterrupted)


@pytest.mark.parametrize("case", sorted(S3_CASES))
def test_run_killed_and_rerun_is_bit_identical_in_s3(case, manifest, uninterrupted, seaweed, tmp_path, monkeypatch):
    point, n = S3_CASES[case]
    sw.use(monkeypatch, seaweed.env(tmp_path / "work"))
    uri = f"s3://{sw.BUCKET}/resume-{uuid.uuid4().hex[:10]}"
    _kill_then_rerun(manifest, uri, point, n, dict(os.environ))
    pulled = tmp_path / "pulled"
    assert main(["pull", uri, str(pulled)]) == 0
    _assert_same(_outcome(*stage_folders(manifest, pulled)), uninterrupted)


def test_a_checkpoint_from_before_the_ranks_sums_travelled_still_restores_one_process_loss_sum(tmp_path):
    import types

    import torch

    from runner.train import CHECKPOINT_LOG_STATE, _restore_log_accumulators

    saved = {"tr_loss": 1.25, "last_logged": 4, "total_train_tokens": 99, "metrics": {"entropy": [0.5]}}
    (tmp_path / CHECKPOINT_LOG_STATE).write_text(json.dumps(saved))
    trainer = types.SimpleNamespace(_tr_loss=torch.tensor(0.0), _globalstep_last_logged=0, _total_train_tokens=0, _metrics={"train": {}})
    _restore_log_accumulators(tmp_path, trainer).on_train_begin(None, None, None)
    assert (trainer._tr_loss.item(), trainer._globalstep_last_logged, trainer._total_train_tokens) == (1.25, 4, 99)
    assert trainer._metrics["train"] == {"entropy": [0.5]}

"""A SIGTERM to a `devices: 2` launcher reaches both torchrun workers: they save, it exits 143, a rerun resumes.

Kubernetes signals only the container's first process, the launcher (`runner run`); torchrun's
workers are its grandchildren. The launcher is signalled from outside, as the kubelet would, once
the training has stored checkpoint-2; the ranks must agree on the step to stop at, save it whole,
and exit 143 through the launcher, leaving no process behind. The rerun must end exactly where an
uninterrupted `devices: 2` run ends (gloo on CPU, float32: adapter bytes, training log and
predictions identical, as tests/test_resume.py checks for one process).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, SYNTHETIC, stage_folders
from test_resume import _assert_same, _outcome

STEPS = 8
# 4 train examples of each of 4 datasets in global batches of 2 ranks × 2: 4 steps an epoch, so a
# resume from step 3 restores a mid-epoch data order and each rank's dropout stream. A held-out
# slice, evaluated before training: that evaluation must not keep the model out of
# DistributedDataParallel (runner/train.py), or a fresh run's ranks would train apart while a
# resumed run's (which skips it) would not, and the two would differ.
# One loss record, at the last step: every checkpoint falls inside its window, so the resumed run's
# record is right only if each rank's own loss sum travelled with the checkpoint.
TRAIN = {"steps": STEPS, "batch_size": 2, "learning_rate": 1e-3, "save_steps": 2, "logging_steps": STEPS, "heldout_examples": 2}
LORA = {"kind": "lora", "r": 4, "alpha": 8, "dropout": 0.1, "target_modules": "attention"}


def _launch(manifest: Path, storage: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "runner", "run", str(manifest), "--storage", str(storage)]
    return subprocess.Popen(command, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen) -> tuple[int, str]:
    output, _ = process.communicate(timeout=600)
    return process.returncode, output


def _processes_naming(text: str) -> list[str]:
    """Command lines of live processes that mention `text` (the launcher, torchrun or a worker)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if proc.name.isdigit() and text in cmdline:
            found.append(f"{proc.name}: {cmdline}")
    return found


def test_sigterm_to_a_two_rank_launcher_saves_exits_143_and_the_rerun_matches_an_uninterrupted_run(tiny_manifest, small_data, tmp_path):
    manifest = tiny_manifest(
        "preempted-ranks", method=LORA, train=TRAIN, devices=2, eval={"shard_size": 4},
        data={"root": str(small_data), "datasets": SYNTHETIC, "max_train_examples": 4, "max_eval_examples": 2},
        decoding={"kind": "greedy", "max_new_tokens": 4, "batch_size": 4},
    )
    code, output = _finish(_launch(manifest, tmp_path / "uninterrupted"))
    assert code == 0, output[-3000:]
    uninterrupted = _outcome(*stage_folders(manifest, tmp_path / "uninterrupted"))

    storage = tmp_path / "preempted"
    evaluation, training = stage_folders(manifest, storage)
    launcher = _launch(manifest, storage)
    seen = training / "checkpoints" / "checkpoint-2" / "qabench_complete"
    deadline = time.monotonic() + 600
    while not seen.is_file() and launcher.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert launcher.poll() is None, "the run ended before checkpoint-2 was seen:\n" + launcher.communicate()[0][-3000:]
    launcher.send_signal(signal.SIGTERM)
    code, output = _finish(launcher)

    assert code == 143, output[-3000:]
    assert "rank 0: 143, rank 1: 143" in output, "each rank saved and exited 143 itself, none was killed"
    assert not _processes_naming(str(manifest)), "no launcher, torchrun or worker process is left"
    checkpoints = sorted((training / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    reached = int(checkpoints[-1].name.split("-")[1])
    # Signalled after checkpoint-2 was marked, i.e. after step 2's end: the ranks stop at a later step's end.
    assert 2 < reached < STEPS, f"stopped at step {reached}"
    assert (checkpoints[-1] / "qabench_complete").is_file()
    assert json.loads((checkpoints[-1] / "trainer_state.json").read_text())["global_step"] == reached
    logged = [json.loads(line)["step"] for line in (training / "train_log.jsonl").read_text().splitlines()]
    assert max(logged) <= reached, "the stored log ends at the saved step"
    assert not (training / "_SUCCESS").exists() and not (evaluation / "_SUCCESS").exists()

    code, output = _finish(_launch(manifest, storage))
    assert code == 0, output[-3000:]
    assert f"resuming training from checkpoint-{reached}" in output
    _assert_same(_outcome(evaluation, training), uninterrupted)


def _codes(folder: Path, *ranks: int | None) -> Path:
    folder.mkdir()
    for index, code in enumerate(ranks):
        if code is not None:
            (folder / f"rank-{index}").write_text(str(code))
    return folder


def test_the_launcher_reports_the_most_telling_rank_exit_code(tmp_path):
    from runner.distributed import _worst_rank

    # A rank's real failure outranks the 143 of ranks torchrun then stopped; a user error outranks all.
    assert _worst_rank(_codes(tmp_path / "a", 143, 3), 2, 1, stopped=False) == 3
    assert _worst_rank(_codes(tmp_path / "b", 2, 143), 2, 1, stopped=False) == 2
    assert _worst_rank(_codes(tmp_path / "c", 143, 1), 2, 1, stopped=False) == 1
    assert _worst_rank(_codes(tmp_path / "d", 0, 0), 2, 0, stopped=False) == 0
    # No code: killed by a signal. After a SIGTERM that is the preemption; otherwise a lost process.
    assert _worst_rank(_codes(tmp_path / "e", 143, None), 2, 1, stopped=True) == 143
    assert _worst_rank(_codes(tmp_path / "f", 0, None), 2, 1, stopped=False) == 3


class _Collective:
    """A stand-in for a pending or finished torch.distributed work handle."""

    def __init__(self, done: bool):
        self.done, self.waited = done, False

    def is_completed(self) -> bool:
        return self.done

    def wait(self) -> bool:
        self.waited = True
        return True


def test_a_rank_waiting_for_the_others_stops_on_sigterm_unless_the_collective_completed():
    from runner import distributed, preemption

    previous = signal.getsignal(signal.SIGTERM)
    preemption.install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        # A rank whose peers will exit 143 without joining must not wait for the grace period's SIGKILL.
        with pytest.raises(preemption.Preempted):
            distributed._wait_for(_Collective(done=False))
        finished = _Collective(done=True)
        distributed._wait_for(finished)
        assert finished.waited, "a collective every rank joined is taken, stop request or not"
    finally:
        preemption.install()  # clears the request
        signal.signal(signal.SIGTERM, previous)

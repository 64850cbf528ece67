"""train.report_to: tensorboard writes event files next to the training's artifacts, holding the
losses train_log.jsonl holds, each step once after a resume; asking for them changes no training identity."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

from conftest import REPO, stage_folders
from runner.cli import main


def _events(folder):
    """Every Event of the folder's event files, files in name (time) order (TFRecord: length, crc, Event proto, crc)."""
    from tensorboardX.proto import event_pb2

    for file in sorted(folder.rglob("events.out.tfevents.*")):
        data, offset = file.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            yield event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4


def _scalars(folder) -> dict[str, dict[int, float]]:
    """tag → step → value from TensorBoard event files."""
    found: dict[str, dict[int, float]] = {}
    for event in _events(folder):
        for value in event.summary.value:
            found.setdefault(value.tag, {})[event.step] = value.simple_value
    return found


def _as_tensorboard_shows(folder) -> dict[str, list[tuple[int, float]]]:
    """tag → [(step, value)] as TensorBoard's reader keeps them: a session START event at step S
    drops the events read so far at steps S and later."""
    shown: dict[str, list[tuple[int, float]]] = {}
    for event in _events(folder):
        if event.HasField("session_log") and event.session_log.status == event.session_log.START:
            shown = {tag: [(step, v) for step, v in points if step < event.step] for tag, points in shown.items()}
        for value in event.summary.value:
            shown.setdefault(value.tag, []).append((event.step, value.simple_value))
    return shown


def test_a_resumed_training_shows_each_step_once_with_the_losses_of_its_log(tiny_manifest, tmp_path):
    manifest = tiny_manifest(
        "tb-resumed", method={"kind": "lora", "r": 4, "alpha": 8, "target_modules": "attention"},
        train={"steps": 6, "batch_size": 4, "learning_rate": 1e-3, "save_steps": 3, "logging_steps": 1, "heldout_examples": 4, "report_to": ["tensorboard"]},
    )
    storage = tmp_path / "runs"
    # Killed after the 6th step: steps 1-5 are logged, the newest checkpoint is step 3.
    killed = subprocess.run([sys.executable, str(REPO / "tests" / "kill_at.py"), "step", "6", "--", "run", str(manifest), "--storage", str(storage)],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert killed.returncode < 0, killed.stderr[-2000:]
    assert main(["run", str(manifest), "--storage", str(storage)]) == 0
    _, training = stage_folders(manifest, storage)
    assert len(list((training / "tensorboard").rglob("events.out.tfevents.*"))) == 3, "one per attempt, and the held-out evaluation after training"
    shown = _as_tensorboard_shows(training / "tensorboard")
    steps = [step for step, _ in shown["train/loss"]]
    assert steps == [1, 2, 3, 4, 5, 6], "a step logged by both attempts shows once"
    logged = {r["step"]: r["loss"] for r in map(json.loads, (training / "train_log.jsonl").read_text().splitlines()) if "loss" in r}
    assert all(abs(value - logged[step]) < 1e-4 for step, value in shown["train/loss"])
    assert [step for step, _ in shown["eval/loss"]][0] == 0, "the held-out loss before training survives the resume"


def test_tensorboard_event_files_hold_the_logged_training_losses(tiny_manifest, tmp_path):
    manifest = tiny_manifest(
        "tb-lora", method={"kind": "lora", "r": 4, "alpha": 8, "target_modules": "attention"},
        train={"steps": 4, "batch_size": 4, "save_steps": 2, "logging_steps": 1, "heldout_examples": 4, "report_to": ["tensorboard"]},
    )
    storage = tmp_path / "runs"
    assert main(["run", str(manifest), "--storage", str(storage)]) == 0
    _, training = stage_folders(manifest, storage)
    logged = [json.loads(line) for line in (training / "train_log.jsonl").read_text().splitlines()]
    scalars = _scalars(training / "tensorboard")
    losses = {r["step"]: r["loss"] for r in logged if "loss" in r}
    assert losses and scalars["train/loss"].keys() == losses.keys()
    assert all(abs(scalars["train/loss"][step] - loss) < 1e-4 for step, loss in losses.items())
    assert "eval/loss" in scalars, "held-out loss is logged too"


def test_asking_for_tensorboard_does_not_change_the_training_identity(tiny_manifest):
    from runner.identity import training_request
    from runner.manifest import load_manifest

    plain = tiny_manifest("tb-off", method={"kind": "lora", "r": 4, "alpha": 8})
    watched = tiny_manifest("tb-on", method={"kind": "lora", "r": 4, "alpha": 8}, train={"steps": 4, "batch_size": 4, "learning_rate": 1e-3, "save_steps": 2, "logging_steps": 1, "report_to": ["tensorboard"]})
    assert training_request(load_manifest(plain).manifest) == training_request(load_manifest(watched).manifest)

"""Loss curves of the trainings behind the runs, from each training's `train_log.jsonl`.

The runner appends every trainer log record to `trainings/<digest>/train_log.jsonl` as JSON
lines: `{"step", "epoch", "loss", "grad_norm", "learning_rate", ...}` for training steps and
`{"step", ..., "eval_loss", ...}` for held-out evaluations (one before the first step, one at
each `eval_steps`, one after the last), without clock readings (runner/train.py). An
evaluation finds its training through metrics.json `training`; several evaluations of one
training (greedy and prompt-lookup decoding, say) share one curve.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

from analysis.load import RunInfo
from runner.errors import StorageError
from runner.paths import TRAIN_LOG_FILE, TrainingKeys


@dataclass(frozen=True)
class TrainingCurve:
    """One training's losses by step."""

    digest: str
    runs: tuple[RunInfo, ...]
    """The evaluated runs that use this training, in report order."""
    train: tuple[tuple[int, float], ...]
    """(step, training loss) as logged every `logging_steps`."""
    heldout: tuple[tuple[int, float], ...]
    """(step, held-out loss) at step 0, every `eval_steps` and after the last step."""


def parse_train_log(text: str) -> tuple[dict[int, float], dict[int, float], list[int]]:
    """(step → loss, step → eval_loss, numbers of lines that are not JSON objects).

    A step logged twice keeps its last value: a training resumed from a checkpoint continues the
    log published with that checkpoint, and the closing held-out evaluation repeats the last step.
    """
    train: dict[int, float] = {}
    heldout: dict[int, float] = {}
    bad = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            bad.append(number)
            continue
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            bad.append(number)
            continue
        for key, into in (("loss", train), ("eval_loss", heldout)):
            value = record.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                into[record["step"]] = float(value)
    return train, heldout, bad


def training_curves(runs: Sequence[RunInfo]) -> tuple[list[TrainingCurve], list[str]]:
    """One curve per training the runs used (in the order of its first run), and a note for
    each training whose log is missing, unreadable or holds no loss."""
    users: dict[str, list[RunInfo]] = {}
    for run in runs:
        if run.training:
            users.setdefault(run.training, []).append(run)
    curves, notes = [], []
    for digest, mine in users.items():
        first = mine[0].ref
        key = first.key(TrainingKeys(digest).train_log)
        where = f"{first.where(TrainingKeys(digest).prefix)}/{TRAIN_LOG_FILE}"
        used_by = ", ".join(f"{r.name}/{r.digest}" for r in mine)
        try:
            text = first.store.read_bytes(key).decode("utf-8", errors="replace") if first.store.exists(key) else None
        except StorageError as exc:
            notes.append(f"{where}: unreadable ({exc}); no loss curve for {used_by}")
            continue
        if text is None:
            notes.append(f"{where}: missing; no loss curve for {used_by}")
            continue
        train, heldout, bad = parse_train_log(text)
        if bad:
            notes.append(f"{where}: line(s) {', '.join(map(str, bad[:5]))}{' …' if len(bad) > 5 else ''} are not log records; skipped")
        if not train and not heldout:
            notes.append(f"{where}: no loss or eval_loss records; no loss curve for {used_by}")
            continue
        curves.append(TrainingCurve(digest, tuple(mine), tuple(sorted(train.items())), tuple(sorted(heldout.items()))))
    return curves, notes

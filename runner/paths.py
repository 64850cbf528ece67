"""The only place artifact keys are built: `trainings/<digest>/...` per training, `<name>/<digest>/...` per evaluation."""

from __future__ import annotations

import re
from dataclasses import dataclass

from runner.errors import UserError

SHARD_PATTERN = re.compile(r"^shard-(\d{5})\.parquet$")

# Characters a key never needs and that let it mean something else somewhere: `\\` is a separator
# on Windows, `%` starts a URL escape (`%2e%2e` is `..` once decoded), `?` and `#` end an
# S3 or HTTP path, `:` makes a drive letter or a URL scheme; control characters hide in logs.
_FORBIDDEN = re.compile(r"[\\%?#:\x00-\x1f\x7f]")


def check_key(key: str, allow_empty: bool = False) -> str:
    """`key` unchanged when it is a relative path that stays below its prefix; UserError if not.

    Stores call this on every key, so no artifact name, shard key or manifest name can reach a
    file or object outside the storage root, whatever the backend does with `..` or escapes.
    """
    if key == "" and allow_empty:
        return key
    reason = None
    if not key:
        reason = "it is empty"
    elif key.startswith("/"):
        reason = "it is an absolute path"
    elif _FORBIDDEN.search(key):
        reason = f"it contains {_FORBIDDEN.search(key).group()!r}"
    elif any(part in ("", ".", "..") for part in key.split("/")):
        reason = "it has an empty, '.' or '..' path component"
    if reason:
        raise UserError(f"invalid storage key {key!r}: {reason}; keys are relative paths below the storage root")
    return key


# Artifact names. Readers (analysis, plan, score) take them from here, never spell them out.
TRAININGS = "trainings"
"""Top-level folder of training stages; reserved, so no manifest may be named after it."""
MANIFEST_FILE = "manifest.yaml"
TRAINING_FILE = "training.yaml"
PROVENANCE_FILE = "provenance.json"
TRAIN_LOG_FILE = "train_log.jsonl"
METRICS_FILE = "metrics.json"
SUCCESS_FILE = "_SUCCESS"
PREDICTIONS_DIR = "predictions"
CHECKSUMS_FILE = "_CHECKSUMS.json"
ADAPTER_DIR = "adapter"
CHECKPOINTS_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"
LEASE_DIR = "lease"
QUARANTINE_DIR = "_quarantine"
"""Folder inside a run or training prefix where damaged objects are moved aside, never deleted."""


@dataclass(frozen=True)
class TrainingKeys:
    """Keys of one training stage's artifacts: `trainings/<digest>/...`, shared by every evaluation that uses it."""

    digest: str

    @property
    def prefix(self) -> str:
        return f"{TRAININGS}/{self.digest}"

    def _key(self, *parts: str) -> str:
        return "/".join((self.prefix, *parts))

    @property
    def spec(self) -> str:
        """What the training was asked to do (model, method, train settings, data), as YAML."""
        return self._key(TRAINING_FILE)

    @property
    def provenance(self) -> str:
        return self._key(PROVENANCE_FILE)

    @property
    def train_log(self) -> str:
        return self._key(TRAIN_LOG_FILE)

    @property
    def adapter(self) -> str:
        """Folder with the trained weights (a peft adapter, or the full model)."""
        return self._key(ADAPTER_DIR)

    @property
    def checkpoints(self) -> str:
        return self._key(CHECKPOINTS_DIR)

    @property
    def tensorboard(self) -> str:
        """TensorBoard event files, when the training asked for them (`train.report_to`)."""
        return self._key(TENSORBOARD_DIR)

    @property
    def lease(self) -> str:
        """Folder of lease generations: who may train this stage now (runner/lease.py)."""
        return self._key(LEASE_DIR)

    def lease_generation(self, generation: int) -> str:
        return self._key(LEASE_DIR, f"{generation:08d}.json")

    @property
    def success(self) -> str:
        """Written last, after the adapter: the training is finished and never redone."""
        return self._key(SUCCESS_FILE)


@dataclass(frozen=True)
class RunKeys:
    """Keys of one evaluation's artifacts (a "run" in reports): `<name>/<digest>/...`."""

    name: str
    digest: str

    @property
    def prefix(self) -> str:
        return f"{self.name}/{self.digest}"

    def _key(self, *parts: str) -> str:
        return "/".join((self.prefix, *parts))

    @property
    def manifest(self) -> str:
        return self._key(MANIFEST_FILE)

    @property
    def provenance(self) -> str:
        return self._key(PROVENANCE_FILE)

    @property
    def predictions(self) -> str:
        return self._key(PREDICTIONS_DIR)

    def shard(self, index: int) -> str:
        return self._key(PREDICTIONS_DIR, f"shard-{index:05d}.parquet")

    @property
    def checksums(self) -> str:
        """sha256 of every shard, written with the metrics: readers verify what they load."""
        return self._key(PREDICTIONS_DIR, CHECKSUMS_FILE)

    @property
    def metrics(self) -> str:
        return self._key(METRICS_FILE)

    @property
    def success(self) -> str:
        """Written last: its presence means every other artifact is complete."""
        return self._key(SUCCESS_FILE)


def quarantine_key(root: str, key: str, stamp: str) -> str:
    """Where `key`, an object or folder below the run or training prefix `root`, is moved aside:
    `<root>/_quarantine/<stamp>/<key below root>` (the stamp is not hex, so no reader takes it for a run digest)."""
    if not key.startswith(f"{root}/"):
        raise ValueError(f"{key!r} is not below {root!r}")
    return f"{root}/{QUARANTINE_DIR}/{stamp}/{key[len(root) + 1 :]}"


def is_quarantined(key: str) -> bool:
    """Whether a key lies in some run's or training's quarantine folder."""
    return f"/{QUARANTINE_DIR}/" in f"/{key}"


def shard_index(filename: str) -> int | None:
    """The shard number encoded in a shard file name, or None for any other file."""
    match = SHARD_PATTERN.match(filename)
    return int(match.group(1)) if match else None


def parse_run_prefix(key: str) -> RunKeys | None:
    """The run a `<name>/<digest>/_SUCCESS` key belongs to, or None."""
    parts = key.strip("/").split("/")
    if len(parts) >= 3 and parts[-1] == SUCCESS_FILE and parts[-3] != TRAININGS:
        return RunKeys(parts[-3], parts[-2])
    return None

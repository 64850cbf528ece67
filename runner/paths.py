"""The only place artifact keys are built: `<name>/<digest>/{manifest.yaml, ..., _SUCCESS}`."""

from __future__ import annotations

import re
from dataclasses import dataclass

SHARD_PATTERN = re.compile(r"^shard-(\d{5})\.parquet$")


@dataclass(frozen=True)
class RunKeys:
    """Keys of one run's artifacts, relative to the storage root."""

    name: str
    digest: str

    @property
    def prefix(self) -> str:
        return f"{self.name}/{self.digest}"

    def _key(self, *parts: str) -> str:
        return "/".join((self.prefix, *parts))

    @property
    def manifest(self) -> str:
        return self._key("manifest.yaml")

    @property
    def provenance(self) -> str:
        return self._key("provenance.json")

    @property
    def train_log(self) -> str:
        return self._key("train_log.jsonl")

    @property
    def adapter(self) -> str:
        """Folder with the trained weights (a peft adapter, or the full model)."""
        return self._key("adapter")

    @property
    def checkpoints(self) -> str:
        return self._key("checkpoints")

    @property
    def predictions(self) -> str:
        return self._key("predictions")

    def shard(self, index: int) -> str:
        return self._key("predictions", f"shard-{index:05d}.parquet")

    @property
    def metrics(self) -> str:
        return self._key("metrics.json")

    @property
    def success(self) -> str:
        """Written last: its presence means every other artifact is complete."""
        return self._key("_SUCCESS")


def shard_index(filename: str) -> int | None:
    """The shard number encoded in a shard file name, or None for any other file."""
    match = SHARD_PATTERN.match(filename)
    return int(match.group(1)) if match else None


def parse_run_prefix(key: str) -> RunKeys | None:
    """The run a `<name>/<digest>/_SUCCESS` key belongs to, or None."""
    parts = key.strip("/").split("/")
    if len(parts) >= 3 and parts[-1] == "_SUCCESS":
        return RunKeys(parts[-3], parts[-2])
    return None

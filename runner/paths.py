"""The only place artifact keys are built: `<name>/<digest>/{manifest.yaml, ..., _SUCCESS}`."""

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
    def checksums(self) -> str:
        """sha256 of every shard, written with the metrics: readers verify what they load."""
        return self._key("predictions", "_CHECKSUMS.json")

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

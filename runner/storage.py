"""Artifact storage behind one small protocol; the local folder store is the default.

Every write is atomic (a temp file renamed into place), so a reader never sees half an object
and a killed run leaves only whole files behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from runner.errors import StorageError, UserError

DEFAULT_STORAGE = "runs"


class Store(Protocol):
    """What the runner and analysis need from a storage backend."""

    uri: str

    def exists(self, key: str) -> bool: ...

    def read_bytes(self, key: str) -> bytes: ...

    def write_bytes(self, key: str, data: bytes) -> None: ...

    def list(self, prefix: str) -> list[str]:
        """Every key under `prefix` (recursive), sorted."""
        ...

    def put_dir(self, key: str, folder: Path) -> None:
        """Publish a local folder under `key`, replacing what was there."""
        ...

    def local_dir(self, key: str) -> Path:
        """A local working folder for `key` (trainer checkpoints write here)."""
        ...


class LocalStore:
    """A folder on the local file system."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.uri = self.root.as_uri()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if path != self.root and self.root not in path.parents:
            raise StorageError(f"key {key!r} escapes the storage folder {self.root}")
        return path

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except OSError as exc:
            raise StorageError(f"cannot read {self._path(key)}: {exc.strerror}") from None

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise StorageError(f"cannot write {path}: {exc.strerror}") from None

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.is_dir():
            return []
        keys = []
        for path in base.rglob("*"):
            if path.is_file() and not path.name.startswith("."):
                keys.append(path.relative_to(self.root).as_posix())
        return sorted(keys)

    def put_dir(self, key: str, folder: Path) -> None:
        target = self._path(key)
        if Path(folder).resolve() == target:
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            shutil.copytree(folder, staging, dirs_exist_ok=True)
            # Move the old folder aside rather than deleting it first: a crash in between keeps one.
            retired = target.with_name(f".{target.name}.retired-{os.getpid()}")
            if target.exists():
                os.replace(target, retired)
            os.replace(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise StorageError(f"cannot write {target}: {exc.strerror}") from None

    def local_dir(self, key: str) -> Path:
        path = self._path(key)
        path.mkdir(parents=True, exist_ok=True)
        return path


def open_store(uri: str | None) -> Store:
    """The store for a storage URI: a folder path or file:// URI (default QABENCH_STORAGE, else `runs/`)."""
    uri = uri or os.environ.get("QABENCH_STORAGE") or DEFAULT_STORAGE
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return LocalStore(Path(parsed.path if parsed.scheme == "file" else uri))
    raise UserError(f"unsupported storage URI {uri!r}: use a folder path or file://...")

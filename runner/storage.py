"""Artifact storage behind one small protocol: a local folder (default) or S3-compatible storage.

Every write is whole: the local store writes a temp file and renames it into place, the S3
store PUTs each object in one request (runner/s3store.py). A reader never sees half an object
and a killed run leaves only whole files behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from runner.atomic import copy_atomic, temporary_sibling, write_atomic
from runner.errors import StorageError, UserError
from runner.paths import check_key

DEFAULT_STORAGE = "runs"


class Store(Protocol):
    """What the runner and analysis need from a storage backend; every key goes through check_key."""

    uri: str

    def exists(self, key: str) -> bool: ...

    def read_bytes(self, key: str) -> bytes:
        """The object's bytes; StorageError if it is missing or fails its checksum."""
        ...

    def write_bytes(self, key: str, data: bytes) -> None: ...

    def write_new(self, key: str, data: bytes) -> bool:
        """Write only if nothing is stored under `key` yet (first writer wins); True if this call wrote it.

        Two processes producing the same artifact (a shard of a run started twice) then leave one
        version that every reader sees, so checksums computed by either process agree.
        """
        ...

    def list(self, prefix: str) -> list[str]:
        """Every key under `prefix` (recursive), sorted; names starting with '.' are internal and left out."""
        ...

    def put_dir(self, key: str, folder: Path) -> None:
        """Publish a local folder under `key`, replacing what was there."""
        ...

    def dir_complete(self, key: str) -> bool:
        """True once a `put_dir(key, ...)` has finished (a half-published folder is not complete)."""
        ...

    def remove_dir(self, key: str) -> None:
        """Delete everything under `key`, its local working copy included."""
        ...

    def local_dir(self, key: str) -> Path:
        """A local working folder for `key` (trainer checkpoints write here; publish with put_dir)."""
        ...

    def sync_down(self, key: str) -> Path:
        """local_dir(key) made equal to what storage holds under `key`, checksums verified."""
        ...

    def copy_to(self, prefix: str, dest: Path) -> list[str]:
        """Copy every object under `prefix` to `dest/<key relative to prefix>`; the keys copied."""
        ...

    def publish_pending(self, prefix: str) -> list[str]:
        """Upload what an earlier process kept locally but failed to upload under `prefix`; the keys."""
        ...


class LocalStore:
    """A folder on the local file system."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.uri = self.root.as_uri()

    def _path(self, key: str, allow_root: bool = False) -> Path:
        check_key(key, allow_empty=allow_root)
        path = (self.root / key).resolve()
        # check_key rules out `..`; resolve() also follows symlinks, which could still point outside.
        if path != self.root and self.root not in path.parents:
            raise StorageError(f"key {key!r} escapes the storage folder {self.root}")
        return path

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def read_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc.strerror}") from None

    def write_bytes(self, key: str, data: bytes) -> None:
        self._write(key, data, replace=True)

    def write_new(self, key: str, data: bytes) -> bool:
        return self._write(key, data, replace=False)

    def _write(self, key: str, data: bytes, replace: bool) -> bool:
        path = self._path(key)
        try:
            if replace:
                write_atomic(path, data)
                return True
            with temporary_sibling(path, data) as tmp:
                try:
                    os.link(tmp, path)  # link() refuses an existing name: create-if-absent, atomically
                    return True
                except FileExistsError:
                    return False
        except OSError as exc:
            raise StorageError(f"cannot write {path}: {exc.strerror}") from None

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix, allow_root=True)
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

    def dir_complete(self, key: str) -> bool:
        # put_dir renames a finished folder into place, so a folder with files is a whole one.
        path = self._path(key)
        return path.is_dir() and any(p.is_file() for p in path.rglob("*"))

    def remove_dir(self, key: str) -> None:
        shutil.rmtree(self._path(key), ignore_errors=True)

    def local_dir(self, key: str) -> Path:
        path = self._path(key)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def sync_down(self, key: str) -> Path:
        return self.local_dir(key)

    def copy_to(self, prefix: str, dest: Path) -> list[str]:
        keys = self.list(prefix)
        for key in keys:
            relative = key[len(prefix) + 1 :] if prefix else key
            try:
                copy_atomic(self._path(key), Path(dest) / relative)
            except OSError as exc:
                raise StorageError(f"cannot copy {self._path(key)} to {Path(dest) / relative}: {exc.strerror}") from None
        return keys

    def publish_pending(self, prefix: str) -> list[str]:
        return []  # writes land in place; nothing is ever left waiting


def open_store(uri: str | None) -> Store:
    """The store for a storage URI: a folder, file://... or s3://bucket/prefix (default QABENCH_STORAGE, else `runs/`)."""
    uri = uri or os.environ.get("QABENCH_STORAGE") or DEFAULT_STORAGE
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return LocalStore(Path(parsed.path if parsed.scheme == "file" else uri))
    if parsed.scheme == "s3":
        from runner.s3store import open_s3_store

        return open_s3_store(uri)
    raise UserError(f"unsupported storage URI {uri!r}: use a folder path, file://... or s3://bucket/prefix")

"""Artifact storage behind one small protocol: a local folder (default) or S3-compatible storage.

Every write is whole: the local store writes a temp file and renames it into place, the S3
store PUTs each object in one request (runner/s3store.py). A reader never sees half an object
and a killed run leaves only whole files behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Protocol

from runner.atomic import copy_atomic, temporary_sibling, write_atomic
from runner.errors import StorageError
from runner.filemodes import share_tree, storage_error
from runner.paths import check_key, is_quarantined
from runner.storage_uri import StorageLocation, choose_storage, parse_storage

DIR_MARKER = ".qabench_dir.json"
"""Written last by put_dir into a published folder: {"files": {name: sha256}} (local stores add
"bytes": {name: size}). A folder's files are then checked against what was published."""


class CorruptObject(StorageError):
    """A stored object is not what was written: its bytes fail their checksum, it is missing from a
    folder that lists it, or it is foreign (no checksum, a link out of the storage folder).
    Readers that can redo the work quarantine it (runner/verify_storage.py) instead of failing."""


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks so checkpoints need no memory of their size."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_problems(listed: dict[str, str], found: dict[str, str | None]) -> list[str]:
    """What differs between a folder as published (name → sha256) and as found (name → sha256, None = not hashed)."""
    problems = [f"{name}: missing" for name in sorted(set(listed) - set(found))]
    problems += [f"{name}: not part of the folder as published" for name in sorted(set(found) - set(listed))]
    for name in sorted(set(listed) & set(found)):
        if found[name] is not None and found[name] != listed[name]:
            problems.append(f"{name}: sha256 {found[name][:16]}… differs from the {listed[name][:16]}… published")
    return problems


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
        """Every key under `prefix` (recursive), sorted; names starting with '.' are internal and left
        out, and so is everything quarantined (`_quarantine/` folders)."""
        ...

    def quarantine(self, key: str, dest: str) -> bool:
        """Move the object `key` aside to `dest` (paths.quarantine_key), never deleting it; False if there was none."""
        ...

    def quarantine_dir(self, key: str, dest: str) -> bool:
        """Move the folder `key` aside to `dest`, its completion marker first; False if there was none."""
        ...

    def verify_dir(self, key: str, deep: bool = False) -> list[str]:
        """Problems of a published folder against the files and checksums put_dir recorded, one per
        file ([] when whole, or when nothing was recorded); `deep` rehashes every file's bytes."""
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
            raise CorruptObject(f"key {key!r} escapes the storage folder {self.root} (a link to {path}): not an object of this storage")
        return path

    def _link_path(self, key: str) -> Path:
        """The path of `key` itself, a symbolic link not followed (its folder must lie inside the storage)."""
        check_key(key)
        parent = (self.root / key).parent.resolve()
        if parent != self.root and self.root not in parent.parents:
            raise CorruptObject(f"key {key!r} escapes the storage folder {self.root}")
        return parent / key.rsplit("/", 1)[-1]

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def read_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except OSError as exc:
            raise storage_error("read", path, exc) from None

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
            raise storage_error("write", path, exc) from None

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix, allow_root=True)
        if not base.is_dir():
            return []
        keys = []
        for path in base.rglob("*"):
            if path.is_file() and not path.name.startswith("."):
                key = path.relative_to(self.root).as_posix()
                if not is_quarantined(key):
                    keys.append(key)
        return sorted(keys)

    def put_dir(self, key: str, folder: Path) -> dict[str, str]:
        """Publish `folder` under `key` (renamed into place whole) with its DIR_MARKER; the files' sha256 by name."""
        target = self._path(key)
        if Path(folder).resolve() == target:
            # Written in place (trainer checkpoints): the marker records what the folder holds now.
            # safetensors writes its files 0o600; the published folder is for every reader.
            try:
                share_tree(target)
            except OSError as exc:
                raise storage_error("write", target, exc) from None
            return self._write_marker(target)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        except OSError as exc:
            raise storage_error("write", target, exc) from None
        try:
            shutil.copytree(folder, staging, dirs_exist_ok=True)
            checksums = self._write_marker(staging)
            # mkdtemp's 0o700 and the modes copytree copied would hide the folder from other users.
            share_tree(staging)
            # Move the old folder aside rather than deleting it first: a crash in between keeps one.
            retired = target.with_name(f".{target.name}.retired-{os.getpid()}")
            if target.exists():
                os.replace(target, retired)
            os.replace(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise storage_error("write", target, exc) from None
        return checksums

    @staticmethod
    def _files(folder: Path) -> dict[str, Path]:
        return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")}

    def _write_marker(self, folder: Path) -> dict[str, str]:
        files = self._files(folder)
        checksums = {name: file_sha256(path) for name, path in files.items()}
        sizes = {name: path.stat().st_size for name, path in files.items()}
        try:
            write_atomic(folder / DIR_MARKER, json.dumps({"files": checksums, "bytes": sizes}, indent=1, sort_keys=True).encode())
        except OSError as exc:
            raise storage_error("write", folder / DIR_MARKER, exc) from None
        return checksums

    def verify_dir(self, key: str, deep: bool = False) -> list[str]:
        folder = self._path(key)
        marker = folder / DIR_MARKER
        if not marker.is_file():
            return []  # published before folders carried a marker: nothing to check against
        try:
            recorded = json.loads(marker.read_bytes())
            listed, sizes = dict(recorded["files"]), dict(recorded.get("bytes") or {})
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return [f"{DIR_MARKER}: unreadable, so the folder cannot be checked"]
        found: dict[str, str | None] = {}
        problems = []
        for name, path in self._files(folder).items():
            real = path.resolve()
            if real != self.root and self.root not in real.parents:
                problems.append(f"{name}: a link to {real}, outside the storage folder")
                continue
            found[name] = file_sha256(path) if deep else None
            # Without hashing, a size differing from the published one still gives truncation away.
            if not deep and name in sizes and path.stat().st_size != sizes[name]:
                problems.append(f"{name}: {path.stat().st_size} bytes, {sizes[name]} published")
        return problems + folder_problems(listed, found)

    def quarantine(self, key: str, dest: str) -> bool:
        source = self._link_path(key)
        if not source.exists() and not source.is_symlink():
            return False
        target = self._path(dest)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)  # a rename: the object is kept, under its quarantine name
        except OSError as exc:
            raise storage_error(f"move {source} to", target, exc) from None
        return True

    def quarantine_dir(self, key: str, dest: str) -> bool:
        return self.quarantine(key, dest)

    def dir_complete(self, key: str) -> bool:
        # put_dir renames a finished folder into place, so a folder with files is a whole one.
        path = self._path(key)
        return path.is_dir() and any(p.is_file() for p in path.rglob("*"))

    def remove_dir(self, key: str) -> None:
        shutil.rmtree(self._path(key), ignore_errors=True)

    def local_dir(self, key: str) -> Path:
        path = self._path(key)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise storage_error("write", path, exc) from None
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
                raise storage_error(f"copy {self._path(key)} to", Path(dest) / relative, exc) from None
        return keys

    def publish_pending(self, prefix: str) -> list[str]:
        return []  # writes land in place; nothing is ever left waiting


def open_store(uri: str | StorageLocation | None) -> Store:
    """The store for a storage location: a folder, file:///... or s3://bucket/prefix (runner/storage_uri.py).

    A string is parsed with relative folders against the working folder; None means
    QABENCH_STORAGE, else `runs/`. Manifests' `output.storage` arrives resolved (`choose_storage`).
    """
    location = uri if isinstance(uri, StorageLocation) else parse_storage(uri) if uri else choose_storage(None)
    if location.path is not None:
        return LocalStore(location.path)
    from runner.s3store import open_s3_store

    return open_s3_store(location.uri)

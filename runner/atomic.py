"""Whole-file writes: a file appears under its name complete or not at all.

Every writer fills a temporary sibling (same folder, so the final rename stays on one file system,
where os.replace is atomic), flushes it to disk, then renames it over the target. A reader sees
the old file or the new one, never half of either; a killed writer leaves at most a dot-file,
which storage listings skip (names starting with '.' are internal).
"""

from __future__ import annotations

import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def _create_beside(path: Path) -> tuple[int, Path]:
    """An open descriptor on a new, uniquely named dot-file in `path`'s folder, and its path."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            # Mode 0o666 lets the umask decide, as for open(); mkstemp's 0o600 would leave reports
            # and shared storage unreadable to the group. O_EXCL: never someone else's file.
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue  # 48 random bits: practically never taken


def _sync(path: Path) -> None:
    # Without fsync a crash soon after the rename can leave the new name pointing at an empty file
    # on ext4/xfs: the rename reaches the journal before the data blocks do.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def temporary_sibling(path: Path, data: bytes | None = None) -> Iterator[Path]:
    """A new file beside `path` (parent folders created), holding `data` synced to disk when given;
    removed when the block ends unless the block renamed it away."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_beside(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            if data is not None:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary sibling to fill (stream a download, save a figure); when the block ends without
    an error it is synced and renamed over `path`, otherwise removed and `path` left as it was."""
    with temporary_sibling(path) as tmp:
        yield tmp
        _sync(tmp)
        os.replace(tmp, path)


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write `data` (str as UTF-8) to `path` whole: readers see the old file or the new one, never half."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with temporary_sibling(path, payload) as tmp:
        os.replace(tmp, path)


def copy_atomic(source: Path, target: Path) -> None:
    """Copy the file `source` to `target` whole (parent folders created), replacing what was there."""
    with replacing(target) as tmp:
        shutil.copyfile(source, tmp)

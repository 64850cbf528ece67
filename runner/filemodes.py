"""Who may read what the runner writes, and what to say when the runner itself may not write.

Artifacts are shared: a host's other users read `metrics.json`, a report job in another container
reads `adapter/`. So files get 0o666 and folders 0o777, less the process umask (0o022 by default:
0o644 and 0o755), and QABENCH_UMASK (octal, e.g. 002 for a group-writable storage folder) sets
that umask for the runner process. A storage folder the process cannot write is the caller's to
fix (owner, mode, `--user`), so it is a user error: exit 2, never retried.
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path
from typing import Mapping

from runner.errors import EXIT_USER_ERROR, StorageError, UserError

UMASK_VARIABLE = "QABENCH_UMASK"

_lock = threading.Lock()
_umask: int | None = None


def umask() -> int:
    """The process umask, read once: os.umask can only be read by setting it, which is not thread-safe."""
    global _umask
    with _lock:
        if _umask is None:
            _umask = os.umask(0o022)
            os.umask(_umask)
        return _umask


def parse_umask(text: str) -> int:
    """An octal umask such as 022 or 0o002; UserError naming QABENCH_UMASK otherwise."""
    digits = text.strip().lower().removeprefix("0o")
    if not digits or any(c not in "01234567" for c in digits) or int(digits, 8) > 0o777:
        raise UserError(f"{UMASK_VARIABLE}={text!r}: not an octal umask; write e.g. 022 (files 644, folders 755) or 002 (group-writable)")
    return int(digits, 8)


def apply_umask_setting(environ: Mapping[str, str] = os.environ) -> None:
    """Set the process umask from QABENCH_UMASK when it is set (called once at startup, before any write)."""
    global _umask
    text = environ.get(UMASK_VARIABLE)
    if text is None or text == "":
        return
    value = parse_umask(text)
    with _lock:
        os.umask(value)
        _umask = value


def file_mode() -> int:
    """The mode of a new file: 0o666 less the umask (0o644 under 022)."""
    return 0o666 & ~umask()


def folder_mode() -> int:
    """The mode of a new folder: 0o777 less the umask (0o755 under 022)."""
    return 0o777 & ~umask()


def share_tree(folder: Path) -> None:
    """Give `folder` and everything in it the modes of new files and folders.

    For folders built elsewhere and renamed into place: mkdtemp and TemporaryDirectory make 0o700
    folders, and copytree copies the source's modes, which would hide a published adapter from
    every other user. Links are left alone (their targets are not ours to change).
    """
    os.chmod(folder, folder_mode())
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, folder_mode())
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, file_mode())


class StorageAccessDenied(StorageError):
    """The process may not write (or read) a storage folder: the caller fixes owner or mode; exit 2, not retried."""

    exit_code = EXIT_USER_ERROR


def _nearest_existing(path: Path) -> Path:
    """The deepest existing folder on the way to `path`: the one that refused the new name."""
    folder = path if path.is_dir() else path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def storage_error(action: str, path: Path, exc: OSError) -> StorageError:
    """The StorageError for an OSError on `path`: StorageAccessDenied (exit 2) when permissions or a
    read-only mount refused it, naming the folder and who needs access; a plain one (exit 3) otherwise."""
    if exc.errno in (errno.EACCES, errno.EPERM):
        folder = _nearest_existing(Path(path)) if action != "read" else Path(path)
        verb = "read" if action == "read" else "write here"
        return StorageAccessDenied(
            f"{folder}: permission denied: uid {os.getuid()} (gid {os.getgid()}) cannot {verb}; make the folder "
            f"{'readable' if action == 'read' else 'writable'} for that user, or run the container with --user UID:GID of its owner"
        )
    if exc.errno == errno.EROFS:
        return StorageAccessDenied(f"{_nearest_existing(Path(path))}: read-only file system; mount the storage folder writable (no :ro)")
    return StorageError(f"cannot {action} {path}: {exc.strerror}")

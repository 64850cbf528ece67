"""Artifacts are readable by the host's other users, and storage the process may not write is a user error (exit 2).

Root ignores file modes, and these tests usually run as root: the real-permission test then drops
the capabilities that let root write anywhere (setpriv --bounding-set), and skips where it cannot.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from runner import filemodes, storage
from runner.atomic import copy_atomic, write_atomic
from runner.cli import main
from runner.errors import EXIT_INFRA_ERROR, EXIT_USER_ERROR, StorageError
from runner.filemodes import StorageAccessDenied, apply_umask_setting, storage_error
from runner.storage import LocalStore

# Capabilities that let root ignore a folder's mode: without them uid 0 is checked like anyone.
ROOT_OVERRIDES = "-dac_override,-dac_read_search,-fowner"


@pytest.fixture
def process_umask(monkeypatch):
    """Set this process's umask for one test (the module's cached copy forgotten), restored after."""
    before = os.umask(0o022)
    os.umask(before)
    monkeypatch.setattr(filemodes, "_umask", None)

    def use(value: int) -> None:
        os.umask(value)
        filemodes._umask = None

    yield use
    os.umask(before)
    filemodes._umask = None


def _modes(root: Path) -> dict[str, int]:
    """Permission bits of `root` and of everything under it, by relative path ('.' for root)."""
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        if not path.is_symlink():
            found[path.relative_to(root).as_posix()] = stat.S_IMODE(path.stat().st_mode)
    return found


def _store_writes(root: Path) -> None:
    """Every way LocalStore and the atomic writers create files and folders."""
    store = LocalStore(root / "store")
    store.write_bytes("run/a/metrics.json", b"{}")
    assert store.write_new("run/a/predictions/shard-00000.parquet", b"x")
    with tempfile.TemporaryDirectory() as built:  # 0o700, as the adapter's staging folder is
        (Path(built) / "sub").mkdir(mode=0o700)
        (Path(built) / "sub" / "weights.bin").write_bytes(b"w")
        os.chmod(Path(built) / "sub" / "weights.bin", 0o600)
        store.put_dir("trainings/t/adapter", Path(built))
    store.local_dir("trainings/t/checkpoints")
    write_atomic(root / "reports" / "report.md", "# report")
    copy_atomic(root / "reports" / "report.md", root / "copies" / "deep" / "report.md")
    store.copy_to("run", root / "pulled")


@pytest.mark.parametrize(("setting", "file_mode", "folder_mode"), [(None, 0o644, 0o755), ("002", 0o664, 0o775)])
def test_stored_files_and_folders_get_0666_and_0777_less_the_umask(tmp_path, process_umask, setting, file_mode, folder_mode):
    # The process starts under 077 when QABENCH_UMASK is set: the setting, not the inherited umask, decides.
    process_umask(0o022 if setting is None else 0o077)
    apply_umask_setting({"QABENCH_UMASK": setting} if setting else {})
    out = tmp_path / "out"
    out.mkdir(mode=folder_mode)
    os.chmod(out, folder_mode)
    _store_writes(out)
    modes = _modes(out)
    assert "store/trainings/t/adapter/sub/weights.bin" in modes and "copies/deep/report.md" in modes
    wrong = {name: oct(mode) for name, mode in modes.items() if mode != (folder_mode if (out / name).is_dir() else file_mode)}
    assert not wrong, f"expected files {oct(file_mode)} and folders {oct(folder_mode)}"


@pytest.mark.parametrize("value", ["abc", "8", "0o1000", "22x", "-022"])
def test_a_umask_setting_that_is_not_octal_is_exit_2_before_anything_runs(value, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("QABENCH_UMASK", value)
    assert main(["validate", str(tmp_path / "absent.yaml")]) == EXIT_USER_ERROR
    assert f"QABENCH_UMASK={value!r}: not an octal umask" in capsys.readouterr().err


def test_a_refused_write_names_the_folder_and_the_uid_that_needs_access(tmp_path, monkeypatch):
    def refuse(path, data):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(storage, "write_atomic", refuse)
    (tmp_path / "runs").mkdir()
    with pytest.raises(StorageAccessDenied) as caught:
        LocalStore(tmp_path / "runs").write_bytes("name/digest/metrics.json", b"{}")
    assert caught.value.exit_code == EXIT_USER_ERROR and isinstance(caught.value, StorageError)
    # The deepest folder that exists is the one whose mode refused the new name.
    assert str(caught.value).startswith(f"{tmp_path / 'runs'}: permission denied: uid {os.getuid()} (gid {os.getgid()}) cannot write here")
    assert "--user" in str(caught.value)


def test_a_read_only_mount_is_a_user_error_and_other_failures_stay_retryable(tmp_path):
    read_only = storage_error("write", tmp_path / "x", OSError(errno.EROFS, "Read-only file system"))
    assert read_only.exit_code == EXIT_USER_ERROR and "read-only file system" in str(read_only)
    full = storage_error("write", tmp_path / "x", OSError(errno.ENOSPC, "No space left on device"))
    assert full.exit_code == EXIT_INFRA_ERROR and str(full) == f"cannot write {tmp_path / 'x'}: No space left on device"


def _unprivileged() -> list[str]:
    """A command prefix under which this user's writes obey folder modes, or skip."""
    if os.getuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None or subprocess.run([setpriv, f"--bounding-set={ROOT_OVERRIDES}", "true"], capture_output=True).returncode != 0:
        pytest.skip("running as root without setpriv (util-linux) able to drop CAP_DAC_OVERRIDE: root writes anywhere")
    return [setpriv, f"--bounding-set={ROOT_OVERRIDES}"]


@pytest.mark.parametrize("where", ["the storage folder", "its parent"])
def test_a_run_into_a_folder_this_user_cannot_write_exits_2_naming_the_folder(where, tiny_manifest, tmp_path):
    prefix = _unprivileged()
    locked = tmp_path / "locked"
    locked.mkdir()
    storage_folder = locked if where == "the storage folder" else locked / "runs"
    os.chmod(locked, 0o555)
    try:
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        result = subprocess.run([*prefix, sys.executable, "-m", "runner", "run", str(tiny_manifest("unwritable")), "--storage", str(storage_folder)],
                                env=env, capture_output=True, text=True, timeout=300)
    finally:
        os.chmod(locked, 0o755)
    assert result.returncode == EXIT_USER_ERROR, result.stderr[-2000:]
    assert f"{locked}: permission denied: uid {os.getuid()} (gid {os.getgid()}) cannot write here" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_run_leaves_every_artifact_readable_by_other_users(tiny_manifest, tmp_path):
    lora = {"kind": "lora", "r": 4, "alpha": 8, "target_modules": "attention"}
    manifest = tiny_manifest("shared-modes", method=lora)
    runs = tmp_path / "runs"
    env = {k: v for k, v in os.environ.items() if k != "QABENCH_UMASK"} | {"HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "runner", "run", str(manifest), "--storage", str(runs)],
                            env=env, capture_output=True, text=True, timeout=600, preexec_fn=lambda: os.umask(0o022))
    assert result.returncode == 0, result.stderr[-2000:]
    modes = _modes(runs)
    assert any(name.endswith("/adapter") for name in modes) and any(name.endswith("/metrics.json") for name in modes)
    wrong = {name: oct(mode) for name, mode in modes.items() if mode != (0o755 if (runs / name).is_dir() else 0o644)}
    assert not wrong, "under umask 022 every file is 0644 and every folder 0755"


def test_the_report_follows_qabench_umask_as_the_runs_do(tiny_manifest, tmp_path):
    manifest = tiny_manifest("report-modes")
    runs, reports = tmp_path / "runs", tmp_path / "reports"
    assert main(["run", str(manifest), "--storage", str(runs)]) == 0
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "QABENCH_UMASK": "002"}
    # Started under umask 077: the setting, not the inherited umask, decides.
    command = [sys.executable, "-m", "analysis", "report", str(runs), "--out", str(reports)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, preexec_fn=lambda: os.umask(0o077))
    assert result.returncode == 0, result.stderr[-2000:]
    modes = {name: mode for name, mode in _modes(reports).items() if name != "."}
    assert "report.md" in modes and "results.csv" in modes
    wrong = {name: oct(mode) for name, mode in modes.items() if mode != (0o775 if (reports / name).is_dir() else 0o664)}
    assert not wrong, "under QABENCH_UMASK=002 every report file is 0664 and every folder 0775"

    refused = subprocess.run(command, env={**env, "QABENCH_UMASK": "abc"}, capture_output=True, text=True, timeout=600)
    assert refused.returncode == EXIT_USER_ERROR and "QABENCH_UMASK='abc': not an octal umask" in refused.stderr

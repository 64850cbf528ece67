"""The local store writes whole files or nothing, and keys never leave its folder."""

from __future__ import annotations

import pytest

from runner.errors import StorageError
from runner.paths import RunKeys, parse_run_prefix, shard_index
from runner.storage import LocalStore, open_store


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    store = LocalStore(tmp_path)
    store.write_bytes("a/b/c.json", b"1")
    store.write_bytes("a/b/c.json", b"22")
    assert store.read_bytes("a/b/c.json") == b"22"
    assert [p.name for p in (tmp_path / "a" / "b").iterdir()] == ["c.json"]
    assert store.list("a") == ["a/b/c.json"]


def test_keys_cannot_escape_the_storage_folder(tmp_path):
    with pytest.raises(StorageError):
        LocalStore(tmp_path / "root").write_bytes("../outside", b"x")


def test_put_dir_replaces_the_folder_whole(tmp_path):
    store = LocalStore(tmp_path / "store")
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    (first / "old.bin").write_bytes(b"old")
    (second / "new.bin").write_bytes(b"new")
    store.put_dir("run/adapter", first)
    store.put_dir("run/adapter", second)
    assert store.list("run/adapter") == ["run/adapter/new.bin"]


def test_file_uri_and_plain_path_open_the_same_folder(tmp_path):
    assert open_store(str(tmp_path)).uri == open_store(tmp_path.as_uri()).uri


def test_artifact_keys_follow_the_documented_layout():
    keys = RunKeys("demo", "abc123")
    assert keys.shard(7) == "demo/abc123/predictions/shard-00007.parquet"
    assert keys.success == "demo/abc123/_SUCCESS"
    assert shard_index("shard-00007.parquet") == 7 and shard_index(".shard-00007.parquet.tmp") is None
    assert parse_run_prefix("x/demo/abc123/_SUCCESS") == keys

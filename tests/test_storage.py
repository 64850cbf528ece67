"""One storage contract, checked against the local store and against S3 (a real SeaweedFS server).

The S3 half needs the session's SeaweedFS server and is skipped, with the reason shown, only if
the `weed` binary cannot start.
"""

from __future__ import annotations

import os
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

import seaweed as sw
from runner.atomic import copy_atomic, replacing, write_atomic
from runner.errors import StorageError, UserError
from runner.paths import RunKeys, check_key, parse_run_prefix, shard_index
from runner.storage import LocalStore, Store, open_store

ESCAPING_KEYS = ["../outside", "a/../../outside", "/etc/passwd", "a//b", "./a", "a\\..\\b", "%2e%2e/x", "a/%2E%2E/b", "a?x=1", "a#frag", "C:/x", "a/\x00b", ""]


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path, monkeypatch) -> Store:
    """A fresh, empty store of each kind."""
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    server = request.getfixturevalue("seaweed")
    sw.use(monkeypatch, server.env(tmp_path / "work"))
    return open_store(f"s3://{sw.BUCKET}/contract-{uuid.uuid4().hex[:10]}")


def _forget_local_copies(store: Store) -> None:
    """Make a store behave as on a fresh host: S3's local working folder emptied."""
    cache = getattr(store, "cache", None)
    if cache is not None:
        shutil.rmtree(cache.root)


def test_written_bytes_read_back_and_overwrite(store):
    assert not store.exists("run/a.json")
    store.write_bytes("run/a.json", b"first")
    store.write_bytes("run/a.json", b"second, longer")
    assert store.exists("run/a.json")
    assert store.read_bytes("run/a.json") == b"second, longer"


def _another_host(store: Store, folder) -> Store:
    """The same storage location opened by a second process with its own working folder."""
    if isinstance(store, LocalStore):
        return LocalStore(store.root)
    from runner.s3store import S3Store, make_client

    return S3Store(store.bucket, store.prefix, folder, make_client())


def test_write_new_keeps_the_first_version(store):
    assert store.write_new("run/predictions/shard-00000.parquet", b"first")
    assert not store.write_new("run/predictions/shard-00000.parquet", b"second")
    assert store.read_bytes("run/predictions/shard-00000.parquet") == b"first"
    assert store.publish_pending("") == []


def test_racing_write_new_from_many_hosts_leaves_exactly_one_whole_version(store, tmp_path):
    hosts = [_another_host(store, tmp_path / f"host{i}") for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        won = list(pool.map(lambda i: hosts[i].write_new("run/shard", f"version {i}".encode() * 1000), range(6)))
    assert won.count(True) == 1
    assert store.read_bytes("run/shard") == f"version {won.index(True)}".encode() * 1000


def test_reading_a_missing_key_is_a_storage_error(store):
    with pytest.raises(StorageError):
        store.read_bytes("run/missing.json")


def test_list_is_recursive_sorted_and_stops_at_folder_boundaries(store):
    for key in ("run/b/2.bin", "run/a.txt", "run/b/1.bin", "runner/x.txt", "other/y.txt"):
        store.write_bytes(key, key.encode())
    assert store.list("run") == ["run/a.txt", "run/b/1.bin", "run/b/2.bin"]
    assert store.list("run/b") == ["run/b/1.bin", "run/b/2.bin"]
    assert store.list("") == sorted(["run/b/2.bin", "run/a.txt", "run/b/1.bin", "runner/x.txt", "other/y.txt"])
    assert store.list("nothing/here") == []


def test_list_returns_every_key_beyond_one_page(store):
    # S3 returns at most 1000 keys per ListObjectsV2 call; the store must follow the pages.
    keys = [f"many/k{i:05d}" for i in range(1005)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: store.write_bytes(k, b"x"), keys))
    assert store.list("many") == keys


def test_put_dir_replaces_the_folder_whole(store, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    (first / "sub").mkdir(parents=True), second.mkdir()
    (first / "old.bin").write_bytes(b"old")
    (first / "sub" / "kept-name.bin").write_bytes(b"old too")
    (second / "new.bin").write_bytes(b"new")
    assert not store.dir_complete("run/adapter")
    store.put_dir("run/adapter", first)
    assert store.dir_complete("run/adapter")
    assert store.list("run/adapter") == ["run/adapter/old.bin", "run/adapter/sub/kept-name.bin"]
    store.put_dir("run/adapter", second)
    assert store.list("run/adapter") == ["run/adapter/new.bin"]
    assert store.read_bytes("run/adapter/new.bin") == b"new"


def test_local_dir_is_published_in_place_and_synced_back_on_a_fresh_host(store):
    folder = store.local_dir("run/checkpoints/checkpoint-2")
    assert folder.is_dir()
    (folder / "weights.bin").write_bytes(b"w" * 1000)
    (folder / "state.json").write_text("{}")
    store.put_dir("run/checkpoints/checkpoint-2", folder)
    assert store.list("run/checkpoints") == ["run/checkpoints/checkpoint-2/state.json", "run/checkpoints/checkpoint-2/weights.bin"]
    _forget_local_copies(store)
    synced = store.sync_down("run/checkpoints/checkpoint-2")
    assert sorted(p.name for p in synced.iterdir() if not p.name.startswith(".")) == ["state.json", "weights.bin"]  # .qabench_dir.json: the listing
    assert (synced / "weights.bin").read_bytes() == b"w" * 1000


def test_large_files_round_trip_through_multipart_transfers(store, tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    # 9 MiB + 1 byte: above the 8 MiB multipart threshold, so S3 uploads and downloads it in parts.
    payload = os.urandom(1024) * (9 * 1024) + b"!"
    (folder / "model.safetensors").write_bytes(payload)
    store.put_dir("run/adapter", folder)
    _forget_local_copies(store)
    assert (store.sync_down("run/adapter") / "model.safetensors").read_bytes() == payload
    assert store.read_bytes("run/adapter/model.safetensors") == payload


def test_remove_dir_deletes_the_folder(store):
    store.write_bytes("run/checkpoints/checkpoint-1/a", b"1")
    store.write_bytes("run/checkpoints/checkpoint-2/a", b"2")
    store.remove_dir("run/checkpoints/checkpoint-1")
    assert store.list("run/checkpoints") == ["run/checkpoints/checkpoint-2/a"]
    assert not store.dir_complete("run/checkpoints/checkpoint-1")


def test_copy_to_copies_every_object_below_a_prefix(store, tmp_path):
    store.write_bytes("x/run/a.json", b"a")
    store.write_bytes("x/run/predictions/shard-00000.parquet", b"p")
    store.write_bytes("y/other", b"o")
    dest = tmp_path / "copy"
    assert store.copy_to("x", dest) == ["x/run/a.json", "x/run/predictions/shard-00000.parquet"]
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == ["run/a.json", "run/predictions/shard-00000.parquet"]
    assert (dest / "run" / "predictions" / "shard-00000.parquet").read_bytes() == b"p"


def test_nothing_is_left_pending_after_successful_writes(store, tmp_path):
    store.write_bytes("run/a", b"1")
    store.put_dir("run/d", store.local_dir("run/d"))
    assert store.publish_pending("") == []


@pytest.mark.parametrize("key", ESCAPING_KEYS)
def test_keys_that_could_escape_their_prefix_are_rejected(store, tmp_path, key):
    before = sorted(p for p in tmp_path.rglob("*"))
    for attempt in (
        lambda: store.write_bytes(key, b"x"),
        lambda: store.read_bytes(key),
        lambda: store.exists(key),
        lambda: store.put_dir(key, tmp_path),
        lambda: store.local_dir(key),
    ):
        with pytest.raises(UserError, match="invalid storage key"):
            attempt()
    assert sorted(p for p in tmp_path.rglob("*")) == before, "nothing was written anywhere"


# ---- local store only ---------------------------------------------------------------------------


def test_local_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    store = LocalStore(tmp_path)
    store.write_bytes("a/b/c.json", b"1")
    store.write_bytes("a/b/c.json", b"22")
    assert store.read_bytes("a/b/c.json") == b"22"
    assert [p.name for p in (tmp_path / "a" / "b").iterdir()] == ["c.json"]
    assert store.list("a") == ["a/b/c.json"]


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "deep" / "report.md"
    write_atomic(target, "old")
    with pytest.raises(RuntimeError), replacing(target) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old" and [p.name for p in target.parent.iterdir()] == ["report.md"]


def test_atomic_writes_and_copies_create_folders_and_files_readable_as_umask_allows(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(b"\x00\x01")
    copy_atomic(source, tmp_path / "a" / "b" / "copy.bin")
    write_atomic(tmp_path / "c" / "text.txt", "héllo")
    assert (tmp_path / "a" / "b" / "copy.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "c" / "text.txt").read_text(encoding="utf-8") == "héllo"
    umask = os.umask(0o022)
    os.umask(umask)
    # A temporary file from mkstemp would be 0o600 whatever the umask.
    assert (tmp_path / "c" / "text.txt").stat().st_mode & 0o777 == 0o666 & ~umask


def test_local_store_never_follows_a_symlink_out_of_its_root(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir(), outside.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(StorageError, match="escapes"):
        LocalStore(root).write_bytes("link/file", b"x")
    assert not any(outside.iterdir())


def test_file_uri_and_plain_path_open_the_same_folder(tmp_path):
    assert open_store(str(tmp_path)).uri == open_store(tmp_path.as_uri()).uri


@pytest.mark.parametrize(
    "uri, message",
    [
        ("ftp://host/x", "unsupported storage URI"),
        ("s3://Bad_Bucket/x", "is not a bucket name"),
        ("s3://bucket/a/../b", "invalid storage key"),
        ("s3://bucket/%2e%2e/b", "invalid storage key"),
        ("s3://bucket/x?versionId=1", "not allowed"),
        ("s3://bucket/x#y", "not allowed"),
    ],
)
def test_bad_storage_uris_are_user_errors(uri, message):
    with pytest.raises(UserError, match=message):
        open_store(uri)


def test_manifest_names_that_are_not_one_safe_path_component_are_rejected(tmp_path):
    from runner.manifest import check_manifest

    for name in ("../escape", "/abs", "a/b", "%2e%2e", "a?b"):
        path = tmp_path / "m.yaml"
        path.write_text(f"name: {name!r}\nmodel: {{path: x}}\ndata: {{root: d, datasets: [boolq]}}\nmethod: {{kind: none}}\n")
        problems = [str(p) for p in check_manifest(path)[1]]
        assert any("name" in p for p in problems), (name, problems)


def test_check_key_accepts_ordinary_artifact_keys():
    for key in ("demo/abc123/predictions/shard-00000.parquet", "demo/abc/checkpoints/checkpoint-2/rng_state.pth", "a/.hidden"):
        assert check_key(key) == key


def test_artifact_keys_follow_the_documented_layout():
    keys = RunKeys("demo", "abc123")
    assert keys.shard(7) == "demo/abc123/predictions/shard-00007.parquet"
    assert keys.success == "demo/abc123/_SUCCESS"
    assert shard_index("shard-00007.parquet") == 7 and shard_index(".shard-00007.parquet.tmp") is None
    assert parse_run_prefix("x/demo/abc123/_SUCCESS") == keys

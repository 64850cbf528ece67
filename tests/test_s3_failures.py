"""S3 failure modes against a real SeaweedFS server: unreachable, outage, bad credentials, no bucket, corruption, kill mid-upload."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

import seaweed as sw
from runner.cli import main
from runner.errors import StorageError
from runner.storage import open_store

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def s3(seaweed, tmp_path, monkeypatch):
    """The server, with qabench pointed at it; yields a fresh s3:// prefix. The server is running again afterwards."""
    sw.use(monkeypatch, seaweed.env(tmp_path / "work"))
    yield f"s3://{sw.BUCKET}/failures-{uuid.uuid4().hex[:10]}"
    seaweed.start()


def _files_containing(root: Path, text: str) -> list[Path]:
    needle = text.encode()
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_unreachable_endpoint_is_an_infrastructure_error_naming_it(s3, tiny_manifest, monkeypatch, capsys, tmp_path):
    dead = f"http://127.0.0.1:{sw.free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    monkeypatch.setenv("QABENCH_S3_MAX_ATTEMPTS", "2")
    started = time.monotonic()
    assert main(["run", str(tiny_manifest("unreachable")), "--storage", s3]) == 3
    err = capsys.readouterr().err
    assert f"cannot reach the S3 endpoint {dead}" in err and "Traceback" not in err
    assert time.monotonic() - started < 30, "the retry budget bounds the wait"


def test_wrong_secret_is_access_denied_naming_the_bucket_and_never_shows_the_secret(s3, tiny_manifest, monkeypatch, capsys, tmp_path):
    wrong = "wrong-secret-0d9e8f7a6b"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    manifest = tiny_manifest("wrong-secret")
    assert main(["run", str(manifest), "--storage", s3]) == 2
    assert main(["pull", s3, str(tmp_path / "pulled")]) == 2
    out = capsys.readouterr()
    assert f"access denied to bucket {sw.BUCKET}" in out.err and "Traceback" not in out.err
    for secret in (wrong, sw.SECRET_KEY):
        assert secret not in out.out + out.err
        assert _files_containing(tmp_path, secret) == []


def test_unknown_access_key_is_access_denied_too(s3, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "no-such-key")
    assert main(["pull", s3, str(tmp_path / "pulled")]) == 2
    err = capsys.readouterr().err
    assert f"access denied to bucket {sw.BUCKET}" in err and sw.SECRET_KEY not in err


def test_missing_bucket_is_a_clear_error_unless_creation_is_asked_for(s3, seaweed, monkeypatch, capsys, tmp_path):
    bucket = f"qabench-missing-{uuid.uuid4().hex[:8]}"
    assert main(["pull", f"s3://{bucket}/runs", str(tmp_path / "pulled")]) == 2
    err = capsys.readouterr().err
    assert f"bucket {bucket} does not exist" in err and "QABENCH_S3_CREATE_BUCKET=1" in err
    monkeypatch.setenv("QABENCH_S3_CREATE_BUCKET", "1")
    store = open_store(f"s3://{bucket}/runs")
    store.write_bytes("a/b.json", b"{}")
    assert bucket in {b["Name"] for b in seaweed.client().list_buckets()["Buckets"]}
    assert store.read_bytes("a/b.json") == b"{}"


def test_object_changed_after_upload_is_detected_by_its_sha256(s3, seaweed, tmp_path, capsys):
    store = open_store(s3)
    store.write_bytes("run/predictions/shard-00000.parquet", b"the real bytes")
    client, name = seaweed.client(), f"{store.prefix}/run/predictions/shard-00000.parquet"
    metadata = client.head_object(Bucket=sw.BUCKET, Key=name)["Metadata"]
    client.put_object(Bucket=sw.BUCKET, Key=name, Body=b"the real bytez", Metadata=metadata)
    with pytest.raises(StorageError, match=r"shard-00000\.parquet is corrupt"):
        store.read_bytes("run/predictions/shard-00000.parquet")
    with pytest.raises(StorageError, match="is corrupt"):
        store.sync_down("run/predictions")
    assert main(["pull", s3, str(tmp_path / "pulled")]) == 3
    assert "shard-00000.parquet is corrupt" in capsys.readouterr().err
    assert not (tmp_path / "pulled" / "run" / "predictions" / "shard-00000.parquet").exists()


def test_object_without_a_checksum_is_refused(s3, seaweed):
    store = open_store(s3)
    seaweed.client().put_object(Bucket=sw.BUCKET, Key=f"{store.prefix}/foreign.json", Body=b"{}")
    with pytest.raises(StorageError, match="no sha256 metadata"):
        store.read_bytes("foreign.json")


def test_upload_retries_through_a_short_outage(s3, seaweed, monkeypatch):
    # The restart takes ~4 s. 14 attempts sleep rand * min(0.05 * 2**i, 20) s for i = 0..12: the
    # last four alone sum to under 5 s with probability ~(5/20)**4 / 4! = 2e-4.
    monkeypatch.setenv("QABENCH_S3_MAX_ATTEMPTS", "14")
    store = open_store(s3)
    store.write_bytes("before", b"1")
    seaweed.stop()
    restart = threading.Timer(1.0, seaweed.start)
    restart.start()
    try:
        store.write_bytes("during", b"2")
    finally:
        restart.join()
    assert store.read_bytes("during") == b"2" and store.publish_pending("") == []


def test_outage_past_the_retry_budget_fails_clearly_and_keeps_the_write_for_later(s3, seaweed, monkeypatch):
    monkeypatch.setenv("QABENCH_S3_MAX_ATTEMPTS", "2")
    store = open_store(s3)
    seaweed.stop()
    with pytest.raises(StorageError, match=f"cannot reach the S3 endpoint {seaweed.endpoint}"):
        store.write_bytes("run/predictions/shard-00003.parquet", b"rows")
    with pytest.raises(StorageError):
        store.put_dir("run/adapter", _folder_with(store.local_dir("staging"), {"w.bin": b"weights"}))
    with pytest.raises(StorageError):
        store.write_new("run/predictions/shard-00004.parquet", b"more rows")
    assert (store.cache.root / "run" / "predictions" / "shard-00003.parquet").read_bytes() == b"rows"
    seaweed.start()
    assert not store.exists("run/predictions/shard-00003.parquet")
    assert store.publish_pending("run") == ["run/predictions/shard-00003.parquet", "run/adapter", "run/predictions/shard-00004.parquet"]
    assert store.read_bytes("run/predictions/shard-00003.parquet") == b"rows"
    assert store.dir_complete("run/adapter") and store.read_bytes("run/adapter/w.bin") == b"weights"
    assert store.read_bytes("run/predictions/shard-00004.parquet") == b"more rows"
    assert store.publish_pending("run") == []


def _folder_with(folder: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


# A child process that publishes a large folder and SIGKILLs itself as the second 8 MiB part of
# its multipart upload is about to go out: a real kill at a known point inside an upload.
_KILLED_MID_UPLOAD = """
import os, signal, sys
from pathlib import Path
from runner.storage import open_store
store = open_store(sys.argv[1])
parts = []
def die_on_second_part(**kwargs):
    parts.append(kwargs)
    if len(parts) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
store._client.meta.events.register("before-call.s3.UploadPart", die_on_second_part)
store.put_dir("run/checkpoints/checkpoint-8", Path(sys.argv[2]))
"""


def test_sigkill_during_an_upload_loses_nothing_and_the_next_attempt_finishes_it(s3, tmp_path):
    folder = tmp_path / "checkpoint-8"
    folder.mkdir()
    payload = os.urandom(1 << 20) * 24  # 24 MiB: three 8 MiB parts
    (folder / "optimizer.pt").write_bytes(payload)
    (folder / "qabench_complete").write_text("8")
    child = subprocess.run([sys.executable, "-c", _KILLED_MID_UPLOAD, s3, str(folder)], cwd=REPO, env=os.environ.copy(), capture_output=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
    store = open_store(s3)
    assert not store.dir_complete("run/checkpoints/checkpoint-8") and not store.exists("run/checkpoints/checkpoint-8/optimizer.pt")
    assert store.publish_pending("run") == ["run/checkpoints/checkpoint-8"]
    assert store.dir_complete("run/checkpoints/checkpoint-8")
    assert store.list("run/checkpoints") == ["run/checkpoints/checkpoint-8/optimizer.pt", "run/checkpoints/checkpoint-8/qabench_complete"]
    assert store.read_bytes("run/checkpoints/checkpoint-8/optimizer.pt") == payload

"""Tiny-model runs stored in S3 (a real SeaweedFS server): report parity, kills, outages, fresh hosts."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import seaweed as sw
from analysis.cli import main as analysis_main
from runner.cli import main
from conftest import stage_folders
from runner.s3store import S3Store

REPO = Path(__file__).resolve().parent.parent
LORA = {"kind": "lora", "r": 4, "alpha": 8, "target_modules": "attention"}
PREDICTION_COLUMNS = ["id", "prompt_sha256", "raw_output", "prediction", "output_tokens", "prompt_tokens"]
# Report columns measured with a clock or a memory probe: they differ between any two runs.
MEASURED = ("seconds", "per_second", "memory", "time_to_first", "latency", "gpu_hours", "cost_")


@dataclass
class Bucket:
    """One test's prefix in the test bucket, with direct (boto3) access for checks."""

    server: sw.Seaweed
    prefix: str
    workdir: Path

    @property
    def uri(self) -> str:
        return f"s3://{sw.BUCKET}/{self.prefix}"

    def objects(self) -> dict[str, tuple[bytes, dict[str, str]]]:
        """Key below the prefix → (bytes, metadata), markers included."""
        client, found = self.server.client(), {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=sw.BUCKET, Prefix=f"{self.prefix}/"):
            for item in page.get("Contents", []):
                response = client.get_object(Bucket=sw.BUCKET, Key=item["Key"])
                found[item["Key"][len(self.prefix) + 1 :]] = (response["Body"].read(), response["Metadata"])
        return found


@pytest.fixture
def s3(seaweed, tmp_path, monkeypatch) -> Bucket:
    workdir = tmp_path / "work"
    sw.use(monkeypatch, seaweed.env(workdir))
    yield Bucket(seaweed, f"runs-{uuid.uuid4().hex[:10]}", workdir)
    seaweed.start()  # a test that stopped it leaves it running for the next


def _run_prefix(manifest: Path) -> str:
    return stage_folders(manifest, manifest.parent)[0].relative_to(manifest.parent).as_posix()


def _training_prefix(manifest: Path) -> str:
    return stage_folders(manifest, manifest.parent)[1].relative_to(manifest.parent).as_posix()


def _predictions(objects: dict[str, tuple[bytes, dict]], run: str) -> list[dict]:
    shards = sorted(k for k in objects if k.startswith(f"{run}/predictions/shard-"))
    tables = [pq.read_table(pa.BufferReader(objects[k][0]), columns=PREDICTION_COLUMNS) for k in shards]
    return [row for table in tables for row in table.to_pylist()]


def _local_predictions(folder: Path) -> list[dict]:
    return [r for shard in sorted((folder / "predictions").glob("shard-*.parquet")) for r in pq.read_table(shard, columns=PREDICTION_COLUMNS).to_pylist()]


def _unmeasured(results_csv: Path) -> list[dict[str, str]]:
    rows = list(csv.DictReader(results_csv.read_text().splitlines()))
    return [{k: v for k, v in row.items() if not any(m in k for m in MEASURED)} for row in rows]


def _files_containing(root: Path, text: str) -> list[Path]:
    needle = text.encode()
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_lora_run_to_s3_reports_from_s3_like_the_same_run_stored_locally(s3, tiny_manifest, tmp_path, capsys):
    manifest = tiny_manifest("s3-e2e", method=LORA)
    run, training = _run_prefix(manifest), _training_prefix(manifest)
    assert main(["run", str(manifest), "--storage", s3.uri]) == 0

    objects = s3.objects()
    for key, (data, metadata) in objects.items():
        assert metadata.get("sha256") == hashlib.sha256(data).hexdigest(), key
    shards = [f"{run}/predictions/shard-{i:05d}.parquet" for i in range(5)]
    for key in ("manifest.yaml", "provenance.json", "metrics.json", "_SUCCESS"):
        assert f"{run}/{key}" in objects, key
    for key in ("training.yaml", "provenance.json", "train_log.jsonl", "_SUCCESS", "adapter/adapter_config.json", "adapter/.qabench_dir.json"):
        assert f"{training}/{key}" in objects, key
    for step in (2, 4):  # save_steps 2 of 4 steps; the trainer keeps the last two
        assert f"{training}/checkpoints/checkpoint-{step}/qabench_complete" in objects
        assert f"{training}/checkpoints/checkpoint-{step}/.qabench_dir.json" in objects
    assert sorted(k for k in objects if "/predictions/shard-" in k) == shards
    log_steps = [json.loads(line)["step"] for line in objects[f"{training}/train_log.jsonl"][0].decode().splitlines()]
    assert log_steps and max(log_steps) == 4

    first = capsys.readouterr()
    assert sw.SECRET_KEY not in first.out + first.err and _files_containing(s3.workdir, sw.SECRET_KEY) == []

    # A fresh host: no local working folder. A finished run is skipped without loading the model.
    shutil.rmtree(s3.workdir)
    assert main(["run", str(manifest), "--storage", s3.uri]) == 0
    out = capsys.readouterr().out
    assert "already complete" in out and "loading model" not in out
    assert not s3.workdir.exists() or not any(p.is_file() for p in s3.workdir.rglob("*"))

    from_s3, pulled, from_pulled = tmp_path / "report-s3", tmp_path / "pulled", tmp_path / "report-pulled"
    assert analysis_main(["report", s3.uri, "--out", str(from_s3), "--no-figures"]) == 0
    assert main(["pull", s3.uri, str(pulled)]) == 0
    assert (pulled / training / "adapter" / "adapter_model.safetensors").is_file()
    assert analysis_main(["report", str(pulled), "--out", str(from_pulled), "--no-figures"]) == 0
    for table in ("results.csv", "results_by_slice.csv"):
        assert (from_s3 / table).read_text() == (from_pulled / table).read_text(), table

    local, from_local = tmp_path / "local-runs", tmp_path / "report-local"
    assert main(["run", str(manifest), "--storage", str(local)]) == 0
    assert analysis_main(["report", str(local), "--out", str(from_local), "--no-figures"]) == 0
    assert _unmeasured(from_s3 / "results.csv") == _unmeasured(from_local / "results.csv")
    assert _predictions(s3.objects(), run) == _local_predictions(local / run)

    # Rescoring reads the shards from the bucket and writes metrics.json back there.
    original = json.loads(objects[f"{run}/metrics.json"][0])
    assert main(["score", f"{s3.uri}/{run}"]) == 0
    assert json.loads(s3.objects()[f"{run}/metrics.json"][0])["overall"] == original["overall"]

    out = capsys.readouterr()
    assert sw.SECRET_KEY not in out.out + out.err
    assert _files_containing(tmp_path, sw.SECRET_KEY) == []


# The runner in a child process that SIGKILLs itself at a chosen point: right after
# checkpoint-2 is in storage (mid-training), or as shard 1's upload begins (mid-upload).
_KILL_AT = """
import os, signal, sys
from runner.cli import main
from runner.s3store import S3Store
point = sys.argv.pop(1)
put_dir, upload, create = S3Store.put_dir, S3Store._upload, S3Store._create
def put_dir_then_die(self, key, folder):
    put_dir(self, key, folder)
    if point == "checkpoint-2" and key.endswith("/checkpoints/checkpoint-2"):
        os.kill(os.getpid(), signal.SIGKILL)
def die_while_uploading(self, key, path):
    if point == "upload-shard-1" and key.endswith("/shard-00001.parquet"):
        os.kill(os.getpid(), signal.SIGKILL)
    upload(self, key, path)
def die_while_creating(self, key, path):
    if point == "upload-shard-1" and key.endswith("/shard-00001.parquet"):
        os.kill(os.getpid(), signal.SIGKILL)
    return create(self, key, path)
S3Store.put_dir, S3Store._upload, S3Store._create = put_dir_then_die, die_while_uploading, die_while_creating
sys.exit(main(sys.argv[1:]))
"""


def _killed_at(point: str, manifest: Path, uri: str) -> str:
    command = [sys.executable, "-c", _KILL_AT, point, "run", str(manifest), "--storage", uri]
    child = subprocess.run(command, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, timeout=600)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-3000:]
    return child.stdout.decode()


def test_run_killed_in_training_and_mid_upload_resumes_from_storage_losing_and_duplicating_nothing(s3, tiny_manifest, capsys):
    manifest = tiny_manifest("s3-killed", method=LORA)
    run, training = _run_prefix(manifest), _training_prefix(manifest)

    _killed_at("checkpoint-2", manifest, s3.uri)
    stored = s3.objects()
    assert f"{training}/checkpoints/checkpoint-2/.qabench_dir.json" in stored
    assert not any("/adapter/" in k or "/predictions/" in k for k in stored)
    shutil.rmtree(s3.workdir)  # the next attempt runs on a fresh host

    out = _killed_at("upload-shard-1", manifest, s3.uri)
    assert "fetching checkpoint-2 from storage" in out and "resuming training from checkpoint-2" in out
    stored = s3.objects()
    assert f"{training}/adapter/.qabench_dir.json" in stored
    assert sorted(k for k in stored if "/predictions/shard-" in k) == [f"{run}/predictions/shard-00000.parquet"]
    kept = next(s3.workdir.rglob("shard-00001.parquet")).read_bytes()

    capsys.readouterr()
    assert main(["run", str(manifest), "--storage", s3.uri]) == 0
    out = capsys.readouterr().out
    assert "uploaded 1 artifact(s) an earlier attempt kept locally" in out and "resuming: 2 of 5 shards already done" in out
    stored = s3.objects()
    assert stored[f"{run}/predictions/shard-00001.parquet"][0] == kept, "the shard cut off mid-upload was uploaded, not regenerated"
    assert sorted(k for k in stored if "/predictions/shard-" in k) == [f"{run}/predictions/shard-{i:05d}.parquet" for i in range(5)]
    assert sorted(k.split("/")[3] for k in stored if k.endswith("/qabench_complete")) == ["checkpoint-2", "checkpoint-4"]
    metrics = json.loads(stored[f"{run}/metrics.json"][0])
    assert metrics["overall"]["n"] == 24 and metrics["train"]["steps"] == 4
    losses = [r["step"] for r in map(json.loads, stored[f"{training}/train_log.jsonl"][0].decode().splitlines()) if "loss" in r]
    assert losses == sorted(set(losses)) == [1, 2, 3, 4], "no training step lost or logged twice"

    # Answers are not compared with an uninterrupted run: training resumed from a checkpoint is
    # not bit-identical to uninterrupted training in trl/transformers (with the local store too),
    # and a tiny random model flips a token on that.
    resumed = _predictions(stored, run)
    assert len({r["id"] for r in resumed}) == len(resumed) == 24


def test_storage_outage_mid_run_fails_clearly_keeps_work_and_rerun_completes(s3, tiny_manifest, tmp_path, monkeypatch, capsys):
    manifest = tiny_manifest("s3-outage")
    run = _run_prefix(manifest)
    monkeypatch.setenv("QABENCH_S3_MAX_ATTEMPTS", "2")
    write = S3Store.write_new  # shards are written first-writer-wins

    def write_then_lose_the_server(self, key, data):
        written = write(self, key, data)
        if key.endswith("shard-00001.parquet"):
            s3.server.stop()
        return written

    monkeypatch.setattr(S3Store, "write_new", write_then_lose_the_server)
    assert main(["run", str(manifest), "--storage", s3.uri]) == 3
    err = capsys.readouterr().err
    assert f"cannot reach the S3 endpoint {s3.server.endpoint}" in err and "shard-00002.parquet" in err and "Traceback" not in err
    kept = next(s3.workdir.rglob("shard-00002.parquet")).read_bytes()

    monkeypatch.setattr(S3Store, "write_new", write)
    s3.server.start()
    assert main(["run", str(manifest), "--storage", s3.uri]) == 0
    out = capsys.readouterr().out
    assert "uploaded 1 artifact(s)" in out and "resuming: 3 of 5 shards already done" in out
    stored = s3.objects()
    assert stored[f"{run}/predictions/shard-00002.parquet"][0] == kept

    local = tmp_path / "uninterrupted"
    assert main(["run", str(manifest), "--storage", str(local)]) == 0
    visible = sorted(k for k in stored if not k.rsplit("/", 1)[-1].startswith("."))
    assert visible == sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    assert _predictions(stored, run) == _local_predictions(local / run)
    reference = json.loads((local / run / "metrics.json").read_text())
    assert json.loads(stored[f"{run}/metrics.json"][0])["overall"] == reference["overall"]


def test_same_manifest_run_twice_at_once_on_two_hosts_gives_one_whole_run(s3, tiny_manifest):
    manifest = tiny_manifest("s3-twice", eval={"shard_size": 4})
    run = _run_prefix(manifest)
    command = [sys.executable, "-m", "runner", "run", str(manifest), "--storage", s3.uri]
    hosts = [
        subprocess.Popen(command, cwd=REPO, env={**os.environ, "QABENCH_WORKDIR": str(s3.workdir / host)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for host in ("a", "b")
    ]
    results = [host.communicate(timeout=600) for host in hosts]
    assert [host.returncode for host in hosts] == [0, 0], [err.decode()[-2000:] for _, err in results]

    stored = s3.objects()
    shards = sorted(k for k in stored if "/predictions/shard-" in k)
    assert shards == [f"{run}/predictions/shard-{i:05d}.parquet" for i in range(6)]
    rows = _predictions(stored, run)
    assert len(rows) == len({r["id"] for r in rows}) == 24
    metrics = json.loads(stored[f"{run}/metrics.json"][0])
    assert metrics["overall"]["n"] == 24 and f"{run}/_SUCCESS" in stored

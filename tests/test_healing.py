"""Storage that heals: a shard, a checkpoint file, metrics.json and _SUCCESS corrupted, deleted or
replaced by another run's, locally and in SeaweedFS — each found (`runner verify`, exit 4), moved
to `_quarantine/` (never deleted), redone by the next run, and the answers equal the undamaged
run's. A report over a storage with one damaged run reports the others (exit 4, with the repair)."""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import seaweed as sw
from analysis.cli import main as analysis_main
from conftest import SYNTHETIC, stage_folders, write_manifest
from runner.cli import main

LORA = {"kind": "lora", "r": 4, "alpha": 8, "target_modules": "attention"}
# heldout_examples 0: a resume from checkpoint-2 is then bit-identical to the uninterrupted run.
TRAIN = {"steps": 4, "batch_size": 4, "learning_rate": 1e-3, "save_steps": 2, "logging_steps": 1, "heldout_examples": 0}
ANSWERS = ["id", "prompt_sha256", "raw_output", "prediction"]
"""The columns that say what was answered; timing columns differ between any two runs."""

OBJECTS = ("shard", "checkpoint", "metrics", "success")
DAMAGES = ("corrupt", "delete", "foreign")


@dataclass(frozen=True)
class Baseline:
    """Two finished runs in one storage: `tuned` (LoRA, trained) and `prompted` (1-shot, no training)."""

    tuned: Path
    prompted: Path
    run: str
    """The tuned run's prefix `<name>/<digest>`."""
    other: str
    """The prompted run's prefix."""
    training: str
    answers: list[dict]


def _manifests(folder: Path, small_data: Path, tiny_models: dict[str, Path]) -> tuple[Path, Path]:
    common = {
        "model": {"path": str(tiny_models["llama"])},
        "data": {"root": str(small_data), "datasets": SYNTHETIC},
        "decoding": {"kind": "greedy", "max_new_tokens": 6, "batch_size": 4},
        "eval": {"shard_size": 5},
    }
    tuned = write_manifest(folder, "tuned", method=LORA, train=TRAIN, **common)
    prompted = write_manifest(folder, "prompted", method={"kind": "none"}, icl={"shots": 1}, **common)
    return tuned, prompted


def _prefixes(tuned: Path, prompted: Path) -> tuple[str, str, str]:
    root = tuned.parent
    run, training = stage_folders(tuned, root)
    other, _ = stage_folders(prompted, root)
    return run.relative_to(root).as_posix(), other.relative_to(root).as_posix(), training.relative_to(root).as_posix()


def _answers(shards: list[bytes]) -> list[dict]:
    return [row for data in shards for row in pq.read_table(pa.BufferReader(data), columns=ANSWERS).to_pylist()]


def _local_answers(storage: Path, run: str) -> list[dict]:
    return _answers([p.read_bytes() for p in sorted((storage / run / "predictions").glob("shard-*.parquet"))])


def _target(base: Baseline, thing: str) -> tuple[str, str]:
    """(key damaged, key of the foreign object put in its place)."""
    return {
        "shard": (f"{base.run}/predictions/shard-00002.parquet", f"{base.other}/predictions/shard-00002.parquet"),
        "checkpoint": (
            f"{base.training}/checkpoints/checkpoint-4/adapter_model.safetensors",
            f"{base.training}/checkpoints/checkpoint-2/adapter_model.safetensors",
        ),
        "metrics": (f"{base.run}/metrics.json", f"{base.other}/metrics.json"),
        "success": (f"{base.run}/_SUCCESS", f"{base.other}/_SUCCESS"),
    }[thing]


def _flip(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1 :]


def _detected(thing: str, damage: str) -> bool:
    # A deleted _SUCCESS leaves a run that looks unfinished (killed after metrics.json): not
    # damage, and the next run completes it without loading a model.
    return not (thing == "success" and damage == "delete")


# ---- local storage ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_base(tmp_path_factory, small_data, tiny_models) -> tuple[Baseline, Path]:
    folder = tmp_path_factory.mktemp("healing-local")
    tuned, prompted = _manifests(folder / "manifests", small_data, tiny_models)
    storage = folder / "runs"
    for manifest in (tuned, prompted):
        assert main(["run", str(manifest), "--storage", str(storage)]) == 0
    run, other, training = _prefixes(tuned, prompted)
    return Baseline(tuned, prompted, run, other, training, _local_answers(storage, run)), storage


def _reopen_training_locally(storage: Path, base: Baseline) -> None:
    """A training stopped after its last checkpoint: no adapter, no _SUCCESS, no evaluation yet."""
    (storage / base.training / "_SUCCESS").unlink()
    shutil.rmtree(storage / base.training / "adapter")
    shutil.rmtree(storage / base.run)


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("thing", OBJECTS)
def test_local_damage_is_quarantined_and_redone_by_the_next_run(local_base, tmp_path, capsys, thing, damage):
    base, pristine = local_base
    storage = tmp_path / "runs"
    shutil.copytree(pristine, storage, symlinks=True)
    if thing == "checkpoint":
        _reopen_training_locally(storage, base)
    key, foreign = _target(base, thing)
    path = storage / key
    if damage == "corrupt":
        path.write_bytes(_flip(path.read_bytes()))
    elif damage == "delete":
        path.unlink()
    else:
        path.write_bytes((storage / foreign).read_bytes())
    capsys.readouterr()

    found = main(["verify", str(storage)])
    out = capsys.readouterr().out
    if _detected(thing, damage):
        assert found == 4 and (f"/{key.rsplit('/', 1)[-1]}" in out or "checkpoint-4" in out), out
    else:
        assert found == 0

    assert main(["run", str(base.tuned), "--storage", str(storage)]) == 0
    out = capsys.readouterr().out
    assert "Traceback" not in out
    if _detected(thing, damage):
        assert "repaired" in out and "_quarantine/" in out, out
        quarantine = storage / (base.training if thing == "checkpoint" else base.run) / "_quarantine"
        kept = [p for p in quarantine.rglob("*") if p.is_file()]
        assert kept, "what was moved aside is kept"
        if damage != "delete":
            assert any(p.name == key.rsplit("/", 1)[-1] for p in kept)
    if thing == "checkpoint":
        assert "checkpoint-4 is damaged" in out and "resuming training from checkpoint-2" in out
    assert _local_answers(storage, base.run) == base.answers
    assert main(["verify", str(storage)]) == 0, capsys.readouterr().out
    assert (storage / base.run / "_SUCCESS").is_file()


@pytest.mark.parametrize("damage", ["truncated", "another shard of the run"])
def test_unfinished_run_regenerates_a_damaged_shard_it_has_no_checksum_for(local_base, tmp_path, capsys, damage):
    base, pristine = local_base
    storage = tmp_path / "runs"
    shutil.copytree(pristine, storage, symlinks=True)
    for name in ("_SUCCESS", "metrics.json", "predictions/_CHECKSUMS.json"):
        (storage / base.run / name).unlink()  # killed before its checksums were written
    shard = storage / base.run / "predictions" / "shard-00003.parquet"
    if damage == "truncated":
        shard.write_bytes(shard.read_bytes()[:-64])
    else:
        shard.write_bytes((storage / base.run / "predictions" / "shard-00001.parquet").read_bytes())
    assert main(["run", str(base.tuned), "--storage", str(storage)]) == 0
    out = capsys.readouterr().out
    assert "repaired" in out and "shard-00003.parquet" in out and "resuming: 4 of 5 shards already done" in out
    assert _local_answers(storage, base.run) == base.answers


def test_verify_repair_reopens_a_finished_run_and_the_next_run_regenerates_the_shard(local_base, tmp_path, capsys):
    base, pristine = local_base
    storage = tmp_path / "runs"
    shutil.copytree(pristine, storage, symlinks=True)
    shard = storage / base.run / "predictions" / "shard-00001.parquet"
    shard.write_bytes(shard.read_bytes()[:-100])  # truncated
    assert main(["verify", str(storage), "--repair"]) == 0
    out = capsys.readouterr().out
    assert "shard-00001.parquet" in out and "reopened" in out and not shard.exists()
    assert not (storage / base.run / "_SUCCESS").exists()
    assert main(["verify", str(storage)]) == 0
    assert main(["run", str(base.tuned), "--storage", str(storage)]) == 0
    assert "already complete" not in capsys.readouterr().out
    assert _local_answers(storage, base.run) == base.answers


def test_score_checks_checksums_first_and_quarantines_a_flipped_shard(local_base, tmp_path, capsys):
    base, pristine = local_base
    storage = tmp_path / "runs"
    shutil.copytree(pristine, storage, symlinks=True)
    shard = storage / base.run / "predictions" / "shard-00003.parquet"
    shard.write_bytes(_flip(shard.read_bytes()))
    metrics = (storage / base.run / "metrics.json").read_bytes()
    assert main(["score", str(storage / base.run)]) == 4
    err = capsys.readouterr().err
    assert "shard-00003.parquet" in err and "differs from" in err and "rerun the manifest" in err
    assert (storage / base.run / "metrics.json").read_bytes() == metrics, "nothing rescored from a damaged shard"
    assert main(["run", str(base.tuned), "--storage", str(storage)]) == 0
    assert main(["score", str(storage / base.run)]) == 0
    assert main(["verify", str(storage)]) == 0, "a rescore keeps _SUCCESS vouching for metrics.json"
    assert _local_answers(storage, base.run) == base.answers


@pytest.mark.parametrize("bad", ["flipped", "link outside storage"])
def test_local_report_reports_the_good_run_and_lists_the_damaged_one(local_base, tmp_path, capsys, bad):
    base, pristine = local_base
    storage = tmp_path / "runs"
    shutil.copytree(pristine, storage, symlinks=True)
    shard = storage / base.other / "predictions" / "shard-00000.parquet"
    if bad == "flipped":
        shard.write_bytes(_flip(shard.read_bytes()))
    else:
        outside = tmp_path / "elsewhere.parquet"
        outside.write_bytes(shard.read_bytes())
        shard.unlink()
        shard.symlink_to(outside)
    assert analysis_main(["report", str(storage), "--out", str(tmp_path / "out"), "--no-figures", "--metrics", "exact_match", "--jobs", "1"]) == 4
    err = capsys.readouterr().err
    assert str(shard) in err and f"python -m runner verify {storage} --repair" in err
    rows = (tmp_path / "out" / "results.csv").read_text().splitlines()
    assert len(rows) == 2 and ",tuned," in rows[1]
    assert "python -m runner verify" in (tmp_path / "out" / "report.md").read_text()


# ---- SeaweedFS -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_base(seaweed, tmp_path_factory, small_data, tiny_models):
    folder = tmp_path_factory.mktemp("healing-s3")
    tuned, prompted = _manifests(folder / "manifests", small_data, tiny_models)
    uri = f"s3://{sw.BUCKET}/healing-{uuid.uuid4().hex[:10]}"
    with pytest.MonkeyPatch.context() as monkeypatch:
        sw.use(monkeypatch, seaweed.env(folder / "work"))
        for manifest in (tuned, prompted):
            assert main(["run", str(manifest), "--storage", uri]) == 0
    run, other, training = _prefixes(tuned, prompted)
    prefix = uri.split("/", 3)[3]
    client = seaweed.client()
    answers = _answers([client.get_object(Bucket=sw.BUCKET, Key=f"{prefix}/{run}/predictions/shard-{i:05d}.parquet")["Body"].read() for i in range(5)])
    return Baseline(tuned, prompted, run, other, training, answers), prefix


class Bucket:
    """A copy of the baseline's objects under a fresh prefix, with direct access for damage and checks."""

    def __init__(self, seaweed, source: str):
        self.client, self.prefix = seaweed.client(), f"healing-{uuid.uuid4().hex[:10]}"
        for key in self.keys(source):
            self.client.copy_object(Bucket=sw.BUCKET, Key=f"{self.prefix}/{key}", CopySource={"Bucket": sw.BUCKET, "Key": f"{source}/{key}"})

    @property
    def uri(self) -> str:
        return f"s3://{sw.BUCKET}/{self.prefix}"

    def keys(self, prefix: str | None = None) -> list[str]:
        prefix = prefix or self.prefix
        found = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=sw.BUCKET, Prefix=f"{prefix}/"):
            found += [item["Key"][len(prefix) + 1 :] for item in page.get("Contents", [])]
        return found

    def get(self, key: str) -> tuple[bytes, dict[str, str]]:
        response = self.client.get_object(Bucket=sw.BUCKET, Key=f"{self.prefix}/{key}")
        return response["Body"].read(), response["Metadata"]

    def put(self, key: str, data: bytes, metadata: dict[str, str]) -> None:
        self.client.put_object(Bucket=sw.BUCKET, Key=f"{self.prefix}/{key}", Body=data, Metadata=metadata)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=sw.BUCKET, Key=f"{self.prefix}/{key}")

    def answers(self, run: str) -> list[dict]:
        shards = sorted(k for k in self.keys() if k.startswith(f"{run}/predictions/shard-"))
        return _answers([self.get(k)[0] for k in shards])


@pytest.fixture
def bucket(seaweed, s3_base, tmp_path, monkeypatch) -> Bucket:
    sw.use(monkeypatch, seaweed.env(tmp_path / "work"))  # a fresh host: nothing cached locally
    yield Bucket(seaweed, s3_base[1])
    seaweed.start()


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("thing", OBJECTS)
def test_s3_damage_is_found_by_verify_repaired_and_redone_by_the_next_run(s3_base, bucket, capsys, thing, damage):
    base = s3_base[0]
    if thing == "checkpoint":
        for key in bucket.keys():
            if key == f"{base.training}/_SUCCESS" or key.startswith((f"{base.training}/adapter/", f"{base.run}/")):
                bucket.delete(key)
    key, foreign = _target(base, thing)
    if damage == "corrupt":
        data, metadata = bucket.get(key)
        bucket.put(key, _flip(data), metadata)  # the recorded sha256 kept: bytes changed after upload
    elif damage == "delete":
        bucket.delete(key)
    else:
        bucket.put(key, *bucket.get(foreign))  # another run's object, with its own valid sha256
    capsys.readouterr()

    repaired = main(["verify", bucket.uri, "--repair"])
    out = capsys.readouterr().out
    assert repaired == 0, out
    if _detected(thing, damage):
        assert "repaired" in out and ("checkpoint-4" in out or key.rsplit("/", 1)[-1] in out), out
        assert any("/_quarantine/" in k for k in bucket.keys()), "moved aside, not deleted"
    assert main(["verify", bucket.uri]) == 0, capsys.readouterr().out
    assert main(["run", str(base.tuned), "--storage", bucket.uri]) == 0
    out = capsys.readouterr().out
    if thing == "checkpoint":
        assert "resuming training from checkpoint-2" in out, out
    assert bucket.answers(base.run) == base.answers
    assert main(["verify", bucket.uri]) == 0, capsys.readouterr().out


@pytest.mark.parametrize("damage", ["corrupt", "foreign"])
def test_s3_next_run_heals_a_damaged_shard_on_its_own(s3_base, bucket, capsys, damage):
    base = s3_base[0]
    key, foreign = _target(base, "shard")
    data, metadata = bucket.get(key)
    if damage == "corrupt":
        bucket.put(key, _flip(data), metadata)
    else:
        bucket.put(key, *bucket.get(foreign))
    capsys.readouterr()
    assert main(["run", str(base.tuned), "--storage", bucket.uri]) == 0
    out = capsys.readouterr().out
    assert "repaired" in out and "shard-00002.parquet" in out and "already complete" not in out
    assert bucket.answers(base.run) == base.answers


def test_s3_adapter_whose_bytes_fail_on_download_is_set_aside_and_trained_again(s3_base, bucket, capsys):
    """Bytes changed after upload with the recorded checksums kept: only the download can tell,
    so the run that needs the adapter quarantines it, trains again and evaluates with that."""
    base = s3_base[0]
    weights = next(k for k in bucket.keys() if k.startswith(f"{base.training}/adapter/") and k.endswith(".safetensors"))
    data, metadata = bucket.get(weights)
    bucket.put(weights, _flip(data), metadata)
    for key in [k for k in bucket.keys() if k.startswith(f"{base.run}/")]:
        bucket.delete(key)  # the evaluation must load the adapter again
    capsys.readouterr()
    assert main(["run", str(base.tuned), "--storage", bucket.uri]) == 0
    out = capsys.readouterr().out
    assert f"repaired training {base.training.rsplit('/', 1)[-1]}" in out and "adapter" in out, out
    assert any(k.startswith(f"{base.training}/_quarantine/") for k in bucket.keys()), "moved aside, not deleted"
    assert bucket.answers(base.run) == base.answers
    assert main(["verify", bucket.uri]) == 0, capsys.readouterr().out


def test_s3_report_reports_the_good_run_beside_a_shard_overwritten_without_checksum(s3_base, bucket, tmp_path, capsys):
    base = s3_base[0]
    key = f"{base.other}/predictions/shard-00001.parquet"
    bucket.put(key, bucket.get(key)[0], {})  # re-uploaded by another tool: no sha256 metadata
    code = analysis_main(["report", bucket.uri, "--out", str(tmp_path / "out"), "--no-figures", "--metrics", "exact_match", "--jobs", "1"])
    err = capsys.readouterr().err
    assert code == 4, err
    assert "shard-00001.parquet has no sha256 metadata" in err and f"python -m runner verify {bucket.uri} --repair" in err
    rows = (tmp_path / "out" / "results.csv").read_text().splitlines()
    assert len(rows) == 2 and ",tuned," in rows[1]

"""Train once, evaluate many: trainings shared through storage (SeaweedFS), leases, fine-tuned drafts, the plan."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import seaweed as sw
from runner.cli import main

REPO = Path(__file__).resolve().parent.parent
LORA = {"kind": "lora", "r": 4, "alpha": 8, "target_modules": "attention"}
COLUMNS = ["id", "prompt_sha256", "raw_output", "prediction", "output_tokens"]

# Runs the runner and, at exit, writes how many optimizer steps this process performed (every
# micro-batch is one step at gradient_accumulation_steps 1) to the file named by STEPS_FILE.
_COUNT_STEPS = """
import atexit, os, sys
import transformers
from runner.cli import main
steps = [0]
original = transformers.Trainer.training_step
def counted(self, *args, **kwargs):
    steps[0] += 1
    return original(self, *args, **kwargs)
transformers.Trainer.training_step = counted
atexit.register(lambda: open(os.environ["STEPS_FILE"], "w").write(str(steps[0])))
sys.exit(main(sys.argv[1:]))
"""

# As above, and SIGKILLs itself the moment checkpoint-2 is complete in storage: a holder that dies
# mid-training without releasing its lease.
_DIE_AFTER_CHECKPOINT_2 = """
import os, signal, sys
from runner.cli import main
from runner.s3store import S3Store
put_dir = S3Store.put_dir
def put_then_die(self, key, folder):
    put_dir(self, key, folder)
    if key.endswith("/checkpoints/checkpoint-2"):
        os.kill(os.getpid(), signal.SIGKILL)
S3Store.put_dir = put_then_die
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture
def s3(seaweed, tmp_path, monkeypatch):
    """A fresh prefix in the test bucket; the environment points at the SeaweedFS server."""
    env = seaweed.env(tmp_path / "work")
    sw.use(monkeypatch, env)
    yield f"s3://{sw.BUCKET}/stages-{uuid.uuid4().hex[:10]}", env, seaweed
    seaweed.start()


def _objects(server, uri: str) -> dict[str, bytes]:
    bucket, prefix = uri[len("s3://") :].split("/", 1)
    client, found = server.client(), {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/"):
        for item in page.get("Contents", []):
            found[item["Key"][len(prefix) + 1 :]] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return found


def _predictions(objects: dict[str, bytes], prefix: str) -> list[dict]:
    shards = sorted(k for k in objects if k.startswith(f"{prefix}/predictions/shard-"))
    return [r for k in shards for r in pq.read_table(pa.BufferReader(objects[k]), columns=COLUMNS).to_pylist()]


def _local_predictions(folder: Path) -> list[dict]:
    return [r for shard in sorted((folder / "predictions").glob("shard-*.parquet")) for r in pq.read_table(shard, columns=COLUMNS).to_pylist()]


def _prefixes(manifest: Path, storage: str) -> tuple[str, str | None]:
    from runner.context import identify, read_data
    from runner.manifest import load_manifest

    loaded = load_manifest(manifest)
    training, _, keys = identify(loaded, read_data(loaded))
    return keys.prefix, training.keys.prefix if training else None


def _host(env: dict[str, str], host: Path, **extra: str) -> dict[str, str]:
    """The environment of a separate host: its own S3 working folder and model cache."""
    return {**os.environ, **env, "QABENCH_WORKDIR": str(host / "work"), "QABENCH_MODEL_CACHE": str(host / "models"), **extra}


def _sampled(tiny_manifest, name: str):
    return tiny_manifest(name, method=LORA, decoding={"kind": "sample", "temperature": 0.9, "seed": 3, "max_new_tokens": 6, "batch_size": 4})


def test_manifest_differing_only_in_decoding_reuses_the_stored_training_on_another_host(s3, tiny_manifest, tmp_path):
    uri, env, server = s3
    greedy = tiny_manifest("shared-greedy", method=LORA)
    sampled = _sampled(tiny_manifest, "shared-sample")
    greedy_run, training = _prefixes(greedy, uri)
    sampled_run, sampled_training = _prefixes(sampled, uri)
    assert training == sampled_training and greedy_run.split("/")[1] != sampled_run.split("/")[1]

    first = subprocess.run([sys.executable, "-c", _COUNT_STEPS, "run", str(greedy), "--storage", uri], cwd=REPO,
                           env=_host(env, tmp_path / "host-a", STEPS_FILE=str(tmp_path / "a.steps")), capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert (tmp_path / "a.steps").read_text() == "4"
    stored_training = {k: v for k, v in _objects(server, uri).items() if k.startswith(training)}

    second = subprocess.run([sys.executable, "-c", _COUNT_STEPS, "run", str(sampled), "--storage", uri], cwd=REPO,
                            env=_host(env, tmp_path / "host-b", STEPS_FILE=str(tmp_path / "b.steps")), capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert (tmp_path / "b.steps").read_text() == "0", "the second host performs no optimizer step"
    assert "already done; reusing its weights" in second.stdout
    objects = _objects(server, uri)
    assert {k: v for k, v in objects.items() if k.startswith(training)} == stored_training, "the training is left as it was"
    assert json.loads(objects[f"{sampled_run}/metrics.json"])["training"] == training.split("/")[1]

    alone = tmp_path / "alone"
    assert main(["run", str(sampled), "--storage", str(alone)]) == 0
    assert _predictions(objects, sampled_run) == _local_predictions(alone / sampled_run)


def _wait_for(condition, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_two_processes_needing_one_training_at_once_train_it_once(s3, tiny_manifest, tmp_path):
    uri, env, server = s3
    greedy = tiny_manifest("together-greedy", method=LORA)
    sampled = _sampled(tiny_manifest, "together-sample")
    processes = [
        subprocess.Popen([sys.executable, "-c", _COUNT_STEPS, "run", str(manifest), "--storage", uri], cwd=REPO, text=True,
                         env=_host(env, tmp_path / host, STEPS_FILE=str(tmp_path / f"{host}.steps"), QABENCH_LEASE_SECONDS="8"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for host, manifest in (("a", greedy), ("b", sampled))
    ]
    outputs = [process.communicate(timeout=600) for process in processes]
    assert [p.returncode for p in processes] == [0, 0], [err[-3000:] for _, err in outputs]
    steps = sorted(int((tmp_path / f"{host}.steps").read_text()) for host in ("a", "b"))
    assert steps == [0, 4], f"the training's 4 steps ran once in total, not {steps}"
    objects = _objects(server, uri)
    for manifest in (greedy, sampled):
        assert f"{_prefixes(manifest, uri)[0]}/_SUCCESS" in objects


def test_holder_killed_mid_training_is_taken_over_from_its_newest_checkpoint(s3, tiny_manifest, tmp_path):
    uri, env, server = s3
    greedy = tiny_manifest("takeover-greedy", method=LORA)
    sampled = _sampled(tiny_manifest, "takeover-sample")
    _, training = _prefixes(greedy, uri)
    expiry = 8
    holder = subprocess.Popen([sys.executable, "-c", _DIE_AFTER_CHECKPOINT_2, "run", str(greedy), "--storage", uri], cwd=REPO, text=True,
                              env=_host(env, tmp_path / "a", QABENCH_LEASE_SECONDS=str(expiry)), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for(lambda: any(k.startswith(f"{training}/lease/") for k in _objects(server, uri)), holder)
    waiter = subprocess.Popen([sys.executable, "-c", _COUNT_STEPS, "run", str(sampled), "--storage", uri], cwd=REPO, text=True,
                              env=_host(env, tmp_path / "b", STEPS_FILE=str(tmp_path / "b.steps"), QABENCH_LEASE_SECONDS=str(expiry)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    holder.communicate(timeout=600)
    assert holder.returncode == -signal.SIGKILL
    died = time.monotonic()
    out, err = waiter.communicate(timeout=600)
    assert waiter.returncode == 0, err[-3000:]
    assert "being trained by" in out and "taking over" in out and "resuming training from checkpoint-2" in out
    assert (tmp_path / "b.steps").read_text() == "2", "the successor trains only the steps after the checkpoint"
    assert time.monotonic() - died < 120

    retry = subprocess.run([sys.executable, "-m", "runner", "run", str(greedy), "--storage", uri], cwd=REPO,
                           env=_host(env, tmp_path / "a"), capture_output=True, text=True, timeout=600)
    assert retry.returncode == 0, retry.stderr[-3000:]
    assert "already done; reusing its weights" in retry.stdout
    objects = _objects(server, uri)
    for manifest in (greedy, sampled):
        assert f"{_prefixes(manifest, uri)[0]}/_SUCCESS" in objects
    losses = [json.loads(line)["step"] for line in objects[f"{training}/train_log.jsonl"].decode().splitlines() if "loss" in json.loads(line)]
    assert losses == sorted(set(losses)), "each step is logged once"


def test_fine_tuned_draft_changes_proposals_but_not_greedy_answers(tiny_manifest, tmp_path, tiny_models):
    from runner.plan import build_plan
    from runner.manifest import load_manifest

    storage = tmp_path / "runs"
    draft = tiny_manifest("draft-mistral-lora", family="mistral", method={**LORA, "target_modules": "all-linear"},
                          train={"steps": 8, "batch_size": 4, "learning_rate": 2e-2, "save_steps": 4, "heldout_examples": 0})
    speculative = {"kind": "speculative", "batch_size": 1, "max_new_tokens": 6, "num_draft_tokens": 3, "schedule": "constant"}
    plain = tiny_manifest("target-greedy", decoding={"kind": "greedy", "max_new_tokens": 6, "batch_size": 1})
    untuned = tiny_manifest("target-untuned-draft", decoding={**speculative, "draft": {"path": str(tiny_models["mistral"])}})
    tuned = tiny_manifest("target-tuned-draft", decoding={**speculative, "draft": {"manifest": draft.name}})

    plan = build_plan([load_manifest(m) for m in (draft, tuned)], str(storage))
    (training,) = plan.trainings
    assert training.trained_by == (str(draft),) and training.drafts_for == (str(tuned),)
    assert main(["run", str(tuned), str(untuned), str(plain), "--storage", str(storage)]) == 0

    runs = {m.stem: storage / _prefixes(m, str(storage))[0] for m in (plain, untuned, tuned)}
    answers = {name: _local_predictions(folder) for name, folder in runs.items()}
    assert answers["target-tuned-draft"] == answers["target-greedy"] == answers["target-untuned-draft"]
    tuned_rate = json.loads((runs["target-tuned-draft"] / "metrics.json").read_text())["generation"]["acceptance_rate"]
    untuned_rate = json.loads((runs["target-untuned-draft"] / "metrics.json").read_text())["generation"]["acceptance_rate"]
    assert tuned_rate is not None and untuned_rate is not None and tuned_rate != untuned_rate
    # Running the draft's own manifest afterwards reuses the training the tuned draft needed.
    assert main(["run", str(draft), "--storage", str(storage)]) == 0
    assert len(list((storage / "trainings").iterdir())) == 1
    provenance = json.loads((runs["target-tuned-draft"] / "provenance.json").read_text())
    assert provenance["draft"] == {"training": training.key}


def test_draft_training_with_another_tokenizer_is_refused_before_anything_trains(tiny_manifest, tmp_path, small_data, capsys):
    from conftest import tiny_corpus
    from tiny_models import save_tiny_model

    other = save_tiny_model(tmp_path / "other-vocabulary", "llama", tiny_corpus(small_data)[:40])
    draft = tiny_manifest("other-vocab-draft", model={"path": str(other)}, method=LORA)
    target = tiny_manifest("refused-target", decoding={"kind": "speculative", "batch_size": 1, "max_new_tokens": 6, "draft": {"manifest": draft.name}})
    storage = tmp_path / "runs"
    assert main(["run", str(target), "--storage", str(storage)]) == 2
    err = capsys.readouterr().err
    assert "tokenizer that differs from the target model's; set decoding.cross_tokenizer: true" in err and "Traceback" not in err
    assert not (storage / "trainings").exists()


def test_plan_shows_shared_trainings_and_progress_in_storage(tiny_manifest, tmp_path, capsys):
    greedy = tiny_manifest("plan-greedy", method=LORA)
    sampled = _sampled(tiny_manifest, "plan-sample")
    zero_shot = tiny_manifest("plan-none")
    storage = tmp_path / "runs"
    folder = greedy.parent

    assert main(["plan", str(folder), "--storage", str(storage), "--json"]) == 0
    before = json.loads(capsys.readouterr().out)
    assert before["counts"]["trainings"] == 1 and before["counts"]["evaluations"] == 3
    (training,) = before["trainings"]
    assert training["state"] == "pending" and sorted(training["trained_by"]) == sorted([str(greedy), str(sampled)])
    assert {e["state"] for e in before["evaluations"]} == {"pending"}

    assert main(["run", str(greedy), "--storage", str(storage)]) == 0
    run, _ = _prefixes(greedy, str(storage))
    for shard in ("shard-00003.parquet", "shard-00004.parquet"):
        (storage / run / "predictions" / shard).unlink()
    (storage / run / "_SUCCESS").unlink()
    capsys.readouterr()
    assert main(["plan", str(folder), "--storage", str(storage), "--json"]) == 0
    after = json.loads(capsys.readouterr().out)
    assert after["trainings"][0]["state"] == "complete"
    states = {Path(e["manifest"]).stem: (e["state"], e["detail"]) for e in after["evaluations"]}
    assert states["plan-greedy"] == ("partial", "3/5 shards; resumes at shard 3")
    assert states["plan-sample"][0] == "pending" and states["plan-none"][0] == "pending"

    assert main(["plan", str(folder), "--storage", str(storage)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("1 distinct training(s), 3 evaluation(s)") and "used by 2: plan-greedy.yaml, plan-sample.yaml" in text
    assert main(["plan", str(folder), "--schedule"]) == 0
    assert capsys.readouterr().out.split() == [str(greedy), str(zero_shot), str(sampled)]


def test_plan_over_unreachable_storage_exits_3_naming_the_endpoint(tiny_manifest, monkeypatch, capsys):
    manifest = tiny_manifest("plan-unreachable")
    port = sw.free_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("QABENCH_S3_MAX_ATTEMPTS", "1")
    assert main(["plan", str(manifest), "--storage", "s3://bucket/prefix"]) == 3
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in err and "Traceback" not in err


def _distinct_trainings(folder: Path) -> int:
    import yaml

    combinations = set()
    for file in folder.glob("*.yaml"):
        manifest = yaml.safe_load(file.read_text())
        if manifest["method"]["kind"] != "none":
            data = {k: manifest["data"].get(k) for k in ("datasets", "train_split", "max_train_examples")}
            combinations.add(json.dumps([manifest["model"], manifest["method"], manifest.get("train"), data], sort_keys=True))
    return len(combinations)


@pytest.mark.parametrize("grid", ["grid", "seed-study"])
def test_plan_of_a_grid_counts_one_training_per_distinct_model_method_training_and_data(grid, capsys):
    folder = REPO / "manifests" / grid
    assert main(["plan", str(folder), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["counts"]["trainings"] == _distinct_trainings(folder)
    assert plan["counts"]["evaluations"] == len(list(folder.glob("*.yaml")))
    if grid == "grid":
        assert (plan["counts"]["trainings"], plan["counts"]["evaluations"]) == (20, 81)


def test_just_grid_runs_a_folder_in_the_plans_order_and_trains_shared_training_once(tiny_manifest, tmp_path):
    zero_shot = tiny_manifest("a-none")
    greedy = tiny_manifest("b-greedy", method=LORA)  # the training's first user runs first
    sampled = _sampled(tiny_manifest, "c-sample")
    storage = tmp_path / "runs"
    just = Path(sys.executable).parent / "just"
    result = subprocess.run([str(just), "grid", str(greedy.parent), "--local", "--storage", str(storage)], cwd=REPO,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    order = [line.removeprefix("== ") for line in result.stdout.splitlines() if line.startswith("== ")]
    assert order == [str(greedy), str(zero_shot), str(sampled)]
    assert result.stdout.count("trained 4 steps") == 1 and "already done; reusing its weights" in result.stdout
    assert "3 manifest(s), 0 failed" in result.stdout


def test_draft_manifest_mistakes_are_reported_at_the_draft_line(tiny_manifest, capsys):
    speculative = {"kind": "speculative", "batch_size": 1, "max_new_tokens": 6}
    looping = tiny_manifest("drafts-with-itself", decoding={**speculative, "draft": {"manifest": "drafts-with-itself.yaml"}})
    missing = tiny_manifest("drafts-with-nothing", decoding={**speculative, "draft": {"manifest": "no-such.yaml"}})
    both = tiny_manifest("drafts-twice", decoding={**speculative, "draft": {"manifest": "x.yaml", "path": "y"}})
    assert main(["validate", str(looping), str(missing), str(both)]) == 2
    err = capsys.readouterr().err
    line = next(i for i, text in enumerate(looping.read_text().splitlines(), 1) if "manifest: drafts-with-itself.yaml" in text)
    assert f"{looping}:{line}: decoding.draft.manifest: " in err and "drafts with itself" in err
    assert f"{missing}:" in err and "no-such.yaml: no such manifest" in err
    assert "set exactly one of hub, path, package, manifest (got path, manifest)" in err
    assert "Traceback" not in err


def test_run_of_several_manifests_does_other_work_while_a_training_is_held_elsewhere(tiny_manifest, tmp_path, monkeypatch, capsys):
    held = tiny_manifest("held-elsewhere", method=LORA)
    free = tiny_manifest("free-to-run")
    storage = tmp_path / "runs"
    _, training = _prefixes(held, str(storage))
    lease = storage / training / "lease" / "00000001.json"
    lease.parent.mkdir(parents=True)
    # A live holder on another host; it dies (stops renewing) and its lease runs out in a few seconds.
    lease.write_text(json.dumps({"holder": "pod-7:12:abcd", "generation": 1, "expires_at": time.time() + 6}))
    monkeypatch.setenv("QABENCH_LEASE_SECONDS", "4")
    assert main(["run", str(held), str(free), "--storage", str(storage)]) == 0
    out = capsys.readouterr().out
    deferred, finished_free = out.index("running the other manifests first"), out.index("run free-to-run")
    assert deferred < finished_free < out.index("waiting for it") < out.index("taking over")
    assert (storage / training / "_SUCCESS").is_file() and (storage / training / "lease" / "00000002.json").is_file()

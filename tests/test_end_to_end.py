"""A tiny model runs a manifest through train → shards → metrics → report; reruns are no-ops."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from analysis.cli import main as analysis_main
from runner.cli import main
from runner.manifest import load_manifest
from conftest import stage_folders

REPO = Path(__file__).resolve().parent.parent

LORA = {"kind": "lora", "r": 4, "alpha": 8, "target_modules": "attention"}


def _run_folder(manifest: Path, storage: Path) -> Path:
    return stage_folders(manifest, storage)[0]


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_lora_manifest_runs_end_to_end_and_rerun_is_a_no_op(tiny_manifest, tmp_path, capsys):
    manifest = tiny_manifest("e2e-lora", method=LORA)
    storage = tmp_path / "runs"
    assert main(["run", str(manifest), "--storage", str(storage)]) == 0
    run, training = stage_folders(manifest, storage)

    for name in ("manifest.yaml", "provenance.json", "metrics.json", "_SUCCESS"):
        assert (run / name).is_file(), name
    for name in ("training.yaml", "provenance.json", "train_log.jsonl", "_SUCCESS"):
        assert (training / name).is_file(), name
    assert (training / "adapter" / "adapter_config.json").is_file()
    assert any((training / "checkpoints").glob("checkpoint-*"))
    shards = sorted((run / "predictions").glob("shard-*.parquet"))
    assert [s.name for s in shards] == [f"shard-{i:05d}.parquet" for i in range(5)]  # 24 examples / 5 per shard

    table = pq.read_table(shards[0])
    assert table.num_rows == 5
    row = table.to_pylist()[0]
    assert row["prompt"].rstrip().endswith("Answer:") and row["prompt_tokens"] > 0
    assert row["references"] and row["output_tokens"] <= 6

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["overall"]["n"] == 24
    assert set(metrics["by_format"]) == {"yes_no", "multiple_choice", "extractive", "abstractive"}
    speed = metrics["generation"]
    from runner.models import load_tokenizer

    tokenizer = load_tokenizer(load_manifest(manifest).manifest.model.path)
    checked = 0
    for shard in shards:
        for saved in pq.read_table(shard).to_pylist():
            assert len(tokenizer(saved["prompt"])["input_ids"]) == saved["prompt_tokens"]
            # A random model can emit bytes that are not UTF-8; their text ("\ufffd") cannot round-trip.
            if "\ufffd" not in saved["raw_output"]:
                retokenized = tokenizer(saved["raw_output"], add_special_tokens=False)["input_ids"]
                assert len(retokenized) == saved["output_tokens"], saved["raw_output"]
                checked += 1
    assert checked >= 4, "some answers decode cleanly and were re-tokenized"
    # Four shards of 5 examples split into batches of 4 and 1, then one shard of 4: 9 batches.
    assert speed["batches"] == 9
    assert speed["generated_tokens"] == sum(sum(pq.read_table(s).column("output_tokens").to_pylist()) for s in shards)
    assert 0 < speed["time_to_first_token_p50"] <= speed["latency_p50"] <= speed["latency_p95"]
    assert speed["prompt_tokens_per_second"] > 0 and speed["peak_memory_bytes"] > 0
    assert metrics["train"]["steps"] == 4 and 0 < metrics["train"]["trainable_parameters"] < metrics["train"]["total_parameters"]
    provenance = json.loads((run / "provenance.json").read_text())
    assert provenance["model"]["folder_sha256"] and provenance["packages"]["transformers"]
    # The build of torch (its metadata version says 2.13.0 for the CPU and the CUDA wheels alike).
    assert (provenance["device"]["torch_build"], provenance["device"]["torch_cuda_build"]) == (torch.__version__, torch.version.cuda)
    assert len(provenance["data"]) == 8  # train and dev of four datasets

    before = _mtimes(run)
    capsys.readouterr()
    assert main(["run", str(manifest), "--storage", str(storage)]) == 0
    assert "already complete" in capsys.readouterr().out
    assert _mtimes(run) == before

    out = tmp_path / "report"
    assert analysis_main(["report", str(storage), "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "| lora |" in report and "e2e-lora" in report
    import csv

    csv_text = (out / "results.csv").read_text()
    assert csv_text.startswith("model,method,shots,decoding,n,exact_match,f1")
    (row,) = list(csv.DictReader(csv_text.splitlines()))
    assert int(row["n"]) == 24 and row["method"] == "lora"
    assert float(row["exact_match"]) == metrics["overall"]["exact_match"] and float(row["f1"]) == metrics["overall"]["f1"]


def test_interrupted_run_resumes_from_its_last_complete_shard(tiny_manifest, tmp_path):
    manifest = tiny_manifest("resume", method=LORA)
    storage = tmp_path / "runs"
    assert main(["run", str(manifest), "--storage", str(storage)]) == 0
    run, training = stage_folders(manifest, storage)
    expected = (run / "metrics.json").read_text()
    # Simulate a run killed while generating shard 3: later shards, metrics and _SUCCESS never written.
    for name in ("predictions/shard-00003.parquet", "predictions/shard-00004.parquet", "metrics.json", "_SUCCESS"):
        (run / name).unlink()
    kept = {p: p.stat().st_mtime_ns for p in (run / "predictions").glob("*.parquet")}
    adapter = (training / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns

    assert main(["run", str(manifest), "--storage", str(storage)]) == 0
    assert (run / "_SUCCESS").is_file()
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items()), "complete shards are not regenerated"
    assert (training / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == adapter, "training is not redone"
    resumed = json.loads((run / "metrics.json").read_text())
    original = json.loads(expected)
    assert resumed["overall"] == original["overall"], "resumed predictions equal uninterrupted ones (greedy)"


# Runs the runner in a child process that SIGKILLs itself the moment shard 1 is in storage: a
# real kill, at a known point between shards, with nothing flushed or cleaned up afterwards.
_KILL_AFTER_SHARD_1 = """
import os, signal, sys
from runner.cli import main
from runner.storage import LocalStore
write = LocalStore.write_new
def write_then_die(self, key, data):
    written = write(self, key, data)
    if key.endswith("shard-00001.parquet"):
        os.kill(os.getpid(), signal.SIGKILL)
    return written
LocalStore.write_new = write_then_die
sys.exit(main(sys.argv[1:]))
"""


def _predictions(run: Path) -> list[dict]:
    columns = ["id", "prompt_sha256", "raw_output", "prediction", "output_tokens", "prompt_tokens"]
    return [r for shard in sorted((run / "predictions").glob("*.parquet")) for r in pq.read_table(shard, columns=columns).to_pylist()]


def test_run_killed_mid_generation_resumes_at_the_first_missing_shard_with_identical_predictions(tiny_manifest, tmp_path):
    manifest = tiny_manifest("killed-generating", eval={"shard_size": 4})
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert main(["run", str(manifest), "--storage", str(reference)]) == 0

    command = [sys.executable, "-c", _KILL_AFTER_SHARD_1, "run", str(manifest), "--storage", str(killed)]
    process = subprocess.run(command, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, timeout=300)
    assert process.returncode == -9, process.stderr.decode()[-2000:]
    run = _run_folder(manifest, killed)
    assert sorted(p.name for p in (run / "predictions").glob("*.parquet")) == ["shard-00000.parquet", "shard-00001.parquet"]
    assert not (run / "_SUCCESS").exists()
    kept = {p.name: p.stat().st_mtime_ns for p in (run / "predictions").glob("*.parquet")}

    assert main(["run", str(manifest), "--storage", str(killed)]) == 0
    assert (run / "_SUCCESS").is_file()
    assert {p.name: p.stat().st_mtime_ns for p in (run / "predictions").glob("*.parquet") if p.name in kept} == kept
    resumed, uninterrupted = _predictions(run), _predictions(_run_folder(manifest, reference))
    assert len(uninterrupted) == 24 and resumed == uninterrupted


def test_finished_run_asked_for_other_metrics_is_rescored_without_regenerating(tiny_manifest, tmp_path):
    storage = tmp_path / "runs"
    first = tiny_manifest("rescored", eval={"metrics": ["exact_match"], "shard_size": 8})
    assert main(["run", str(first), "--storage", str(storage)]) == 0
    run = _run_folder(first, storage)
    shards = {p: p.stat().st_mtime_ns for p in (run / "predictions").glob("*.parquet")}
    wider = tiny_manifest("rescored", eval={"metrics": ["exact_match", "jaccard"], "shard_size": 8})
    assert _run_folder(wider, storage) == run, "the metric list is not part of the run's identity"
    assert main(["run", str(wider), "--storage", str(storage)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["overall"]) == {"n", "exact_match", "jaccard", "reference_perplexity"}
    assert {p: p.stat().st_mtime_ns for p in shards} == shards


@pytest.mark.parametrize("family", ["gemma", "mistral"])
def test_each_tiny_architecture_runs_zero_shot(tiny_manifest, tmp_path, family):
    manifest = tiny_manifest(f"zero-shot-{family}", family=family)
    storage = tmp_path / "runs"
    assert main(["run", str(manifest), "--storage", str(storage)]) == 0
    run = _run_folder(manifest, storage)
    assert json.loads((run / "metrics.json").read_text())["overall"]["n"] == 24
    assert not (run / "adapter").exists(), "method none trains nothing"


def test_bad_manifest_exits_2_and_leaves_earlier_runs_untouched(tiny_manifest, tmp_path, capsys):
    storage = tmp_path / "runs"
    good = tiny_manifest("good")
    assert main(["run", str(good), "--storage", str(storage)]) == 0
    before = _mtimes(storage)
    bad = tiny_manifest("good", method={"kind": "lora", "r": -1})
    capsys.readouterr()
    assert main(["run", str(bad), "--storage", str(storage)]) == 2
    err = capsys.readouterr().err
    assert "method.r" in err and "Traceback" not in err
    assert _mtimes(storage) == before


def test_malformed_data_line_exits_2_with_file_and_line(tiny_manifest, tmp_path, small_data, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(small_data, data)
    dev = data / "synthetic_yes_no" / "dev.tsv"
    lines = dev.read_text().splitlines()
    lines[2] = lines[2].replace("\t", " ")
    dev.write_text("\n".join(lines) + "\n")
    manifest = tiny_manifest("bad-data", data={"root": str(data), "datasets": ["synthetic_yes_no"]})
    capsys.readouterr()
    assert main(["run", str(manifest), "--storage", str(tmp_path / "runs")]) == 2
    assert f"{dev}:3:" in capsys.readouterr().err
    assert not list((tmp_path / "runs").rglob("_SUCCESS"))


def test_unsupported_storage_uri_is_a_user_error(tiny_manifest, capsys):
    assert main(["run", str(tiny_manifest("storage")), "--storage", "ftp://host/x"]) == 2
    assert "unsupported storage URI" in capsys.readouterr().err


def test_rescoring_rewrites_metrics_from_shards_without_a_model(tiny_manifest, tmp_path):
    manifest = tiny_manifest("rescore")
    storage = tmp_path / "runs"
    assert main(["run", str(manifest), "--storage", str(storage)]) == 0
    run = _run_folder(manifest, storage)
    original = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text("{}")
    assert main(["score", str(run)]) == 0
    assert json.loads((run / "metrics.json").read_text())["overall"] == original["overall"]


def test_k_shot_prompts_only_ever_use_train_split_examples(tiny_manifest, tmp_path):
    manifest = tiny_manifest("two-shot", icl={"shots": 2, "strategy": "per_dataset", "seed": 4})
    assert main(["run", str(manifest), "--storage", str(tmp_path)]) == 0
    run = _run_folder(manifest, tmp_path)
    rows = [r for shard in sorted((run / "predictions").glob("*.parquet")) for r in pq.read_table(shard).to_pylist()]
    assert len(rows) == 24
    for row in rows:
        assert row["n_shots"] == 2 and all(s.startswith(f"{row['dataset']}/train/") for s in row["shot_ids"])
        assert "/dev/" in row["id"]


def test_completed_run_lists_each_shard_checksum_and_the_report_skips_a_shard_changed_later(tiny_manifest, tmp_path, capsys):
    import hashlib

    manifest = tiny_manifest("checksummed", eval={"shard_size": 8})
    storage = tmp_path / "runs"
    assert main(["run", str(manifest), "--storage", str(storage)]) == 0
    run = _run_folder(manifest, storage)
    listed = json.loads((run / "predictions" / "_CHECKSUMS.json").read_text())["sha256"]
    shards = sorted((run / "predictions").glob("*.parquet"))
    assert listed == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in shards} and len(listed) == 3

    good = tiny_manifest("checksummed-good", eval={"shard_size": 8})
    assert main(["run", str(good), "--storage", str(storage)]) == 0
    table = pq.read_table(shards[1])
    pq.write_table(table.slice(0, 7), shards[1])  # a shard replaced after the run completed
    capsys.readouterr()
    # Exit 4: the report is written, and says a completed run was left out as damaged.
    assert analysis_main(["report", str(storage), "--out", str(tmp_path / "report")]) == 4
    err = capsys.readouterr().err
    assert "shard-00001.parquet" in err and "checksum" in err and "runner verify" in err
    results = (tmp_path / "report" / "results.csv").read_text()
    assert "checksummed-good" in results and "checksummed," not in results


def _out_of_memory_above(monkeypatch, fits: int) -> None:
    """Make every generate call with more than `fits` prompts fail as a full GPU would."""
    import torch

    import runner.generate

    original = runner.generate.generate_batch

    def limited(model, tokenizer, batch, *args, **kwargs):
        if len(batch) > fits:
            raise torch.OutOfMemoryError(f"CUDA out of memory: batch of {len(batch)} (the test's device holds {fits})")
        return original(model, tokenizer, batch, *args, **kwargs)

    monkeypatch.setattr(runner.generate, "generate_batch", limited)


def test_batch_that_runs_out_of_memory_is_split_and_answers_stay_the_same(tiny_manifest, tmp_path, monkeypatch, capsys):
    decoding = {"kind": "greedy", "max_new_tokens": 6, "batch_size": 8}
    reference = tiny_manifest("oom-reference", decoding=decoding, eval={"shard_size": 12})
    assert main(["run", str(reference), "--storage", str(tmp_path / "reference")]) == 0
    manifest = tiny_manifest("oom", decoding=decoding, eval={"shard_size": 12})
    _out_of_memory_above(monkeypatch, fits=3)
    capsys.readouterr()
    assert main(["run", str(manifest), "--storage", str(tmp_path / "runs")]) == 0
    assert "out of memory at batch size 8; continuing at 4" in capsys.readouterr().out
    run = _run_folder(manifest, tmp_path / "runs")
    rows = [r for s in sorted((run / "predictions").glob("*.parquet")) for r in pq.read_table(s).to_pylist()]
    assert max(r["batch_size"] for r in rows) <= 2, "the size that fits is kept for later batches"
    assert _predictions(run) == _predictions(_run_folder(reference, tmp_path / "reference"))


def test_single_prompt_that_runs_out_of_memory_is_an_infrastructure_error(tiny_manifest, tmp_path, monkeypatch, capsys):
    manifest = tiny_manifest("oom-single")
    _out_of_memory_above(monkeypatch, fits=0)
    capsys.readouterr()
    assert main(["run", str(manifest), "--storage", str(tmp_path / "runs")]) == 3
    assert "out of memory generating a single prompt" in capsys.readouterr().err

"""Bad input never stops a report: each problem names its file, the good runs are still reported,
what was skipped is listed (report.md, report.html, stderr), and nothing is changed or deleted."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from analysis.cli import main as analysis_main
from analysis.report import analyse
from bench.synthetic_runs import SyntheticRun, eval_examples, write_run
from runner.paths import TrainingKeys

EXAMPLES = eval_examples(6)


def _good_and(tmp_path: Path, name: str = "broken") -> tuple[Path, Path, Path]:
    storage = tmp_path / "runs"
    good = write_run(storage, SyntheticRun("good", accuracy=0.6), EXAMPLES)
    bad = write_run(storage, SyntheticRun(name, accuracy=0.4), EXAMPLES)
    return storage, good, bad


def _snapshot(root: Path) -> dict[str, tuple[int, str]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest()) for p in root.rglob("*") if p.is_file()}


def _report(storage: Path, out: Path, capsys, code: int = 4) -> tuple[str, str, str]:
    """Exit 4 when a completed run was left out as damaged, 0 when everything completed was reported."""
    before = _snapshot(storage)
    assert analysis_main(["report", str(storage), "--out", str(out), "--metrics", "exact_match", "--jobs", "1"]) == code
    assert _snapshot(storage) == before, "the report changes and deletes nothing in SOURCE"
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return captured.err, (out / "report.md").read_text(), (out / "report.html").read_text()


def _only_good_reported(out: Path) -> None:
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 2 and ",good," in rows[1]


def _write_checksums(run: Path, override: dict[str, str] | None = None) -> None:
    listing = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((run / "predictions").glob("shard-*.parquet"))}
    listing.update(override or {})
    (run / "predictions" / "_CHECKSUMS.json").write_text(json.dumps({"sha256": listing}))


def test_shard_with_a_wrong_checksum_skips_its_run_and_names_the_file(tmp_path, capsys):
    storage, good, bad = _good_and(tmp_path)
    _write_checksums(good)
    _write_checksums(bad, {"shard-00001.parquet": "0" * 64})
    err, markdown, page = _report(storage, tmp_path / "out", capsys)
    shard = bad / "predictions" / "shard-00001.parquet"
    for text in (err, markdown, page):
        assert str(shard) in text and "checksum mismatch" in text
    _only_good_reported(tmp_path / "out")


def test_matching_checksums_are_accepted(tmp_path):
    storage, good, bad = _good_and(tmp_path, "also-good")
    _write_checksums(good)
    _write_checksums(bad)
    analysis = analyse(str(storage), ["exact_match"], jobs=1, show_progress=False)
    assert len(analysis.loaded.runs) == 2 and not analysis.skipped


def test_truncated_parquet_shard_skips_its_run_and_names_the_file(tmp_path, capsys):
    storage, _, bad = _good_and(tmp_path)
    shard = bad / "predictions" / "shard-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:-200])
    err, markdown, page = _report(storage, tmp_path / "out", capsys)
    for text in (err, markdown, page):
        assert str(shard) in text and "not a readable Parquet file (truncated or corrupt)" in text
    _only_good_reported(tmp_path / "out")


def test_a_finished_training_stage_beside_a_run_is_neither_reported_nor_skipped(tmp_path, capsys):
    storage = tmp_path / "runs"
    write_run(storage, SyntheticRun("good", accuracy=0.6), EXAMPLES)
    # trainings/<digest>/ has the <name>/<digest>/_SUCCESS shape of a run folder, but no manifest
    # or predictions: read as a run it would be skipped as broken.
    training = TrainingKeys("0123456789ab")
    for key, data in (
        (training.spec, b"method: {kind: lora}\n"),
        (f"{training.adapter}/adapter_config.json", b"{}"),
        (f"{training.adapter}/adapter_model.safetensors", bytes(16)),
        (training.success, b"{}"),
    ):
        (storage / key).parent.mkdir(parents=True, exist_ok=True)
        (storage / key).write_bytes(data)
    err, markdown, _ = _report(storage, tmp_path / "out", capsys, code=0)
    _only_good_reported(tmp_path / "out")
    assert "skipped" not in err and training.prefix not in markdown
    analysis = analyse(str(storage), ["exact_match"], jobs=1, show_progress=False)
    assert [run.name for run in analysis.loaded.runs] == ["good"] and analysis.skipped == ()


def test_run_folder_without_success_is_listed_as_skipped(tmp_path, capsys):
    storage = tmp_path / "runs"
    write_run(storage, SyntheticRun("good"), EXAMPLES)
    unfinished = write_run(storage, SyntheticRun("unfinished"), EXAMPLES, success=False)
    err, markdown, _ = _report(storage, tmp_path / "out", capsys, code=0)
    assert f"skipped: {unfinished}: no _SUCCESS" in err and f"{unfinished}: no _SUCCESS" in markdown
    _only_good_reported(tmp_path / "out")


def _rewrite(shard: Path, change) -> None:
    table = change(pq.read_table(shard))
    sink = io.BytesIO()
    pq.write_table(table, sink)
    shard.write_bytes(sink.getvalue())


def test_shard_from_a_different_schema_version_is_skipped_naming_the_column(tmp_path, capsys):
    storage, _, bad = _good_and(tmp_path)
    shard = bad / "predictions" / "shard-00000.parquet"
    # An older layout: references as one string instead of a list of strings.
    _rewrite(shard, lambda t: t.set_column(t.schema.get_field_index("references"), "references", pa.array([r[0] for r in t.column("references").to_pylist()])))
    err, markdown, _ = _report(storage, tmp_path / "out", capsys)
    assert str(shard) in err and "column references is string, expected list<" in err
    assert str(shard) in markdown
    _only_good_reported(tmp_path / "out")


def test_shard_missing_a_required_column_is_skipped(tmp_path):
    storage, _, bad = _good_and(tmp_path)
    _rewrite(bad / "predictions" / "shard-00000.parquet", lambda t: t.drop_columns(["prediction"]))
    (skipped,) = analyse(str(storage), ["exact_match"], jobs=1, show_progress=False).skipped
    assert skipped.location.endswith("shard-00000.parquet") and "no column(s) prediction" in skipped.reason


def test_shard_with_another_schema_version_tag_is_skipped(tmp_path, monkeypatch):
    import analysis.verify as verify

    storage, _, bad = _good_and(tmp_path)
    _rewrite(bad / "predictions" / "shard-00000.parquet", lambda t: t.replace_schema_metadata({verify.SCHEMA_VERSION_KEY: b"1"}))
    monkeypatch.setattr(verify, "SHARD_SCHEMA", verify.SHARD_SCHEMA.with_metadata({verify.SCHEMA_VERSION_KEY: b"2"}))
    (skipped,) = analyse(str(storage), ["exact_match"], jobs=1, show_progress=False).skipped
    assert "shard schema version 1 is not this version's 2" in skipped.reason


def test_older_shards_without_newer_columns_load_with_nulls(tmp_path):
    storage = tmp_path / "runs"
    run = write_run(storage, SyntheticRun("old"), EXAMPLES)
    dropped = ["batch_first_token_seconds", "batch_peak_memory_bytes", "batch_target_forwards", "draft_proposed_tokens", "draft_accepted_tokens"]
    for shard in (run / "predictions").glob("*.parquet"):
        _rewrite(shard, lambda t: t.drop_columns(dropped))
    analysis = analyse(str(storage), ["exact_match"], jobs=1, show_progress=False)
    (summary,) = analysis.runs
    assert not analysis.skipped and summary.n == 24
    assert summary.speed["time_to_first_token_p50"] is None and summary.speed["acceptance_rate"] is None
    assert summary.speed["generated_tokens_per_second"] > 0


def test_missing_shard_in_the_middle_skips_the_run(tmp_path):
    storage, _, bad = _good_and(tmp_path)
    (bad / "predictions" / "shard-00000.parquet").unlink()
    (skipped,) = analyse(str(storage), ["exact_match"], jobs=1, show_progress=False).skipped
    assert skipped.location.endswith("shard-00000.parquet") and "missing" in skipped.reason


def test_example_count_disagreeing_with_metrics_json_skips_the_run(tmp_path):
    storage, _, bad = _good_and(tmp_path)
    metrics = json.loads((bad / "metrics.json").read_text())
    metrics["generation"]["examples"] = 25
    (bad / "metrics.json").write_text(json.dumps(metrics))
    (skipped,) = analyse(str(storage), ["exact_match"], jobs=1, show_progress=False).skipped
    assert skipped.location == str(bad / "metrics.json") and "counts 25 examples but the shards hold 24" in skipped.reason


def test_empty_source_exits_2_with_a_message(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    assert analysis_main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no runs found" in err and str(tmp_path / "runs") in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_single_run_folder_as_source_exits_2_pointing_at_its_storage(tmp_path, capsys):
    run = write_run(tmp_path / "runs", SyntheticRun("one"), EXAMPLES)
    assert analysis_main(["report", str(run), "--out", str(tmp_path / "out")]) == 2
    assert "pass the storage folder two levels up" in capsys.readouterr().err


def test_source_with_only_unusable_runs_exits_2_listing_them(tmp_path, capsys):
    storage = tmp_path / "runs"
    unfinished = write_run(storage, SyntheticRun("unfinished"), EXAMPLES, success=False)
    assert analysis_main(["report", str(storage), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no usable completed run" in err and str(unfinished) in err


def test_runs_on_different_eval_data_are_reported_but_not_paired(tmp_path, capsys):
    storage = tmp_path / "runs"
    tuned = write_run(storage, SyntheticRun("tuned", method="lora", train_seconds=60.0), EXAMPLES)
    prompted = write_run(storage, SyntheticRun("prompted", shots=2, data_tag="other-data"), EXAMPLES)
    err, markdown, _ = _report(storage, tmp_path / "out", capsys, code=0)
    assert "not compared:" in err and str(tuned / "manifest.yaml") in err and str(prompted / "manifest.yaml") in err
    assert "different data" in markdown and "## Fine-tuning cost" not in markdown
    assert len((tmp_path / "out" / "results.csv").read_text().splitlines()) == 3


def test_compare_refuses_runs_whose_eval_data_differ(tmp_path, capsys):
    storage = tmp_path / "runs"
    a = write_run(storage, SyntheticRun("a"), EXAMPLES)
    b = write_run(storage, SyntheticRun("b", data_tag="other-data"), EXAMPLES)
    assert analysis_main(["compare", str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert str(a / "provenance.json") in err and str(b / "provenance.json") in err and "different data" in err


def test_compare_refuses_runs_with_no_shared_examples(tmp_path, capsys):
    storage = tmp_path / "runs"
    a = write_run(storage, SyntheticRun("a"), eval_examples(4, datasets=("boolq",)))
    b = write_run(storage, SyntheticRun("b"), eval_examples(4, datasets=("squad1_1",)))
    assert analysis_main(["compare", str(a), str(b)]) == 2
    assert "share no example ids" in capsys.readouterr().err


def test_compare_refuses_shared_ids_with_different_references(tmp_path, capsys):
    storage = tmp_path / "runs"
    a = write_run(storage, SyntheticRun("a"), eval_examples(4, seed=1))
    b = write_run(storage, SyntheticRun("b"), eval_examples(4, seed=2))
    assert analysis_main(["compare", str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert "different reference answers" in err and str(a / "manifest.yaml") in err


def test_compare_of_an_unfinished_run_exits_2(tmp_path, capsys):
    storage = tmp_path / "runs"
    a = write_run(storage, SyntheticRun("a"), EXAMPLES)
    b = write_run(storage, SyntheticRun("b"), EXAMPLES, success=False)
    assert analysis_main(["compare", str(a), str(b)]) == 2
    assert f"{b}: no _SUCCESS" in capsys.readouterr().err


def test_compare_of_an_unknown_run_exits_2(tmp_path, capsys):
    storage = tmp_path / "runs"
    a = write_run(storage, SyntheticRun("a"), EXAMPLES)
    assert analysis_main(["compare", str(a), str(storage / "nope" / "abcdef123456")]) == 2
    assert f"{storage / 'nope' / 'abcdef123456'}: no run" in capsys.readouterr().err
    assert analysis_main(["compare", "a", "nope", "--source", str(storage)]) == 2
    assert "nope: no completed run of that name or digest" in capsys.readouterr().err


@pytest.mark.parametrize("price", ["-1", "abc", "nan", "inf", ""])
def test_a_price_per_gpu_hour_that_is_negative_or_not_a_number_exits_2_in_one_line(tmp_path, capsys, price):
    storage, _, _ = _good_and(tmp_path)
    assert analysis_main(["report", str(storage), "--out", str(tmp_path / "out"), "--price-per-gpu-hour", price]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--price-per-gpu-hour" in err and repr(price) in err and "Traceback" not in err
    assert not (tmp_path / "out").exists(), "refused before anything was read or written"

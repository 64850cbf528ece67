"""`python -m analysis report`: golden results.csv, every artifact, numbers traceable to shards.

Regenerate the golden file after an intended change with
`QABENCH_REGEN_GOLDEN=1 .venv/bin/python -m pytest -q tests/test_analysis_report.py`.
"""

from __future__ import annotations

import csv
import math
import os
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from analysis.cli import main as analysis_main
from analysis.report import analyse, write_report
from bench.synthetic_runs import SyntheticRun, eval_examples, write_run, write_sample
from runner.score import compute_metrics, score_rows

GOLDEN = Path(__file__).parent / "golden" / "results.csv"
METRICS = ["exact_match", "f1"]


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    storage = tmp_path_factory.mktemp("sample") / "runs"
    write_sample(storage)
    return storage


@pytest.fixture(scope="module")
def report(sample, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    analysis, paths = write_report(str(sample), out, jobs=1, show_progress=False)
    return analysis, out


def test_fixed_shards_give_a_byte_identical_results_csv(sample, tmp_path):
    write_report(str(sample), tmp_path, METRICS, jobs=1, show_progress=False, figures=False)
    produced = (tmp_path / "results.csv").read_bytes()
    if os.environ.get("QABENCH_REGEN_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_bytes(produced)
        pytest.skip(f"regenerated {GOLDEN}")
    assert produced == GOLDEN.read_bytes(), f"results.csv differs from {GOLDEN}; regenerate with QABENCH_REGEN_GOLDEN=1 if intended"


def test_a_second_report_writes_identical_files(sample, report, tmp_path):
    _, first = report
    write_report(str(sample), tmp_path, jobs=1, show_progress=False)
    for name in ("results.csv", "results_by_slice.csv", "report.md", "report.html", "figures/bars_unifiedqa.svg", "figures/pareto_speed.png"):
        assert (tmp_path / name).read_bytes() == (first / name).read_bytes(), name


def test_report_writes_tables_markdown_self_contained_html_and_figures(report):
    analysis, out = report
    for name in ("results.csv", "results_by_slice.csv", "results.parquet", "report.md", "report.html"):
        assert (out / name).stat().st_size > 0, name
    for figure in ("bars_unifiedqa", "bars_exact_match", "pareto_speed", "memory", "heatmap_format", "speed_up", "shots_curve", "pareto_cost", "breakeven", "loss_curves"):
        assert (out / "figures" / f"{figure}.png").stat().st_size > 1000, figure
        assert (out / "figures" / f"{figure}.svg").read_text().lstrip().startswith("<?xml"), figure
    page = (out / "report.html").read_text()
    sources = re.findall(r'<img[^>]* src="([^"]+)"', page)
    assert len(sources) == len(list((out / "figures").glob("*.png"))) and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r'(src|href)="(?!data:)', page), "nothing outside the file is referenced"
    markdown = (out / "report.md").read_text()
    assert "## Model: big-model" in markdown and "## Model: tiny-llama" in markdown
    assert "| lora | 0 | greedy |" in markdown and "(figures/shots_curve.png)" in markdown
    for section in ("## Results", "## Which to pick", "## Fine-tuning cost against k-shot prompting", "## Training curves"):
        assert section in markdown, section
    # The fine-tuning figures sit in their sections, the rest under Figures.
    assert markdown.index("(figures/pareto_cost.png)") < markdown.index("## Model: big-model")
    assert markdown.index("## Training curves") < markdown.index("(figures/loss_curves.png)") < markdown.index("## Figures")


def test_results_parquet_has_one_row_per_example_with_manifest_columns_and_scores(report):
    analysis, out = report
    table = pq.read_table(out / "results.parquet")
    assert table.num_rows == 8 * 40
    assert table.column_names[:6] == ["run", "digest", "model", "method", "shots", "decoding"]
    rows = table.to_pylist()
    expected = score_rows(rows, analysis.metrics)
    for row, scores in zip(rows, expected):
        assert {m: row[m] for m in analysis.metrics} == scores
    assert {r["run"] for r in rows if r["decoding"] == "speculative"} == {"lora"}


def test_csv_means_equal_the_runners_metrics_over_the_same_shards(report):
    analysis, out = report
    rows = list(csv.DictReader((out / "results.csv").read_text().splitlines()))
    assert len(rows) == 8 and list(rows[0])[:7] == ["model", "method", "shots", "decoding", "n", "exact_match", "f1"]
    for run, row in zip((s.run for s in analysis.runs), rows):
        table = analysis.loaded.table.slice(run.start, run.stop - run.start)
        expected = compute_metrics(table, analysis.metrics)["overall"]
        assert int(row["n"]) == expected["n"] == 40
        for metric in analysis.metrics:
            value = row[metric]
            assert (float(value) if value else None) == expected[metric], (run.name, metric)
            low, high = row[f"{metric}_ci95_low"], row[f"{metric}_ci95_high"]
            if value:
                assert float(low) <= float(value) <= float(high)


def test_speculative_run_is_compared_with_its_greedy_twin(report):
    analysis, _ = report
    (up,) = analysis.speed_ups
    assert (up.run.run.decoding, up.baseline.run.decoding) == ("speculative", "greedy")
    assert up.run.run.name == up.baseline.run.name == "lora"
    # Each row proposes 2·out + 2 draft tokens and floor(0.7 × that) are accepted.
    table = analysis.loaded.table.slice(up.run.run.start, 40).to_pydict()
    proposed = sum(2 * o + 2 for o in table["output_tokens"])
    accepted = sum(math.floor(0.7 * (2 * o + 2)) for o in table["output_tokens"])
    assert up.acceptance_rate == accepted / proposed
    assert up.speed_up == up.run.speed["generated_tokens_per_second"] / up.baseline.speed["generated_tokens_per_second"] > 1
    assert up.quality_change == 0.0, "same predictions (same seed) under both decodings"


def test_fine_tuning_break_even_is_train_time_over_prefill_seconds_saved(report):
    analysis, _ = report
    pairs = {(p.tuned.run.name, p.tuned.run.decoding, p.prompted.run.name) for p in analysis.paybacks}
    assert pairs == {("lora", "greedy", "two-shot"), ("lora", "greedy", "four-shot"), ("big-full", "greedy", "big-four-shot")}
    payback = next(p for p in analysis.paybacks if p.prompted.run.name == "four-shot")
    # The synthetic prompts are 45 tokens longer per shot: 4 shots save 180 tokens per query.
    assert payback.tokens_saved_per_query == pytest.approx(180)
    rate = payback.prompted.speed["prompt_tokens_per_second"]
    assert rate == pytest.approx(1 / 2e-4), "synthetic prefill costs 2e-4 s per prompt token"
    # 180 tokens / 5,000 tok/s = 0.036 s saved per query; 120 s of training / 0.036 s = 3,333.3 → 3,334.
    assert payback.breakeven_queries == 3334


def test_report_finds_runs_in_nested_storage_folders(tmp_path):
    write_run(tmp_path / "grid-a", SyntheticRun("one"), eval_examples(3))
    write_run(tmp_path / "grid-b" / "deeper", SyntheticRun("two"), eval_examples(3))
    analysis = analyse(str(tmp_path), METRICS, jobs=1, show_progress=False)
    assert sorted(r.name for r in analysis.loaded.runs) == ["one", "two"]


def test_distinct_inputs_are_scored_once_and_match_row_by_row_scoring(report, monkeypatch):
    import analysis.scores as scores_module

    analysis, _ = report
    calls = []
    real = scores_module._score_chunk
    monkeypatch.setattr(scores_module, "_score_chunk", lambda rows, metrics: calls.append(len(rows)) or real(rows, metrics))
    table = analysis.loaded.table
    scores = scores_module.score_table(table, METRICS, jobs=1)
    assert sum(calls) < table.num_rows / 2, "8 runs over the same 160 examples repeat most inputs"
    expected = score_rows(table.select(list(scores_module.SCORED_COLUMNS)).to_pylist(), METRICS)
    for i, row in enumerate(expected):
        assert all(scores[m][i] == row[m] for m in METRICS)


def test_scoring_in_worker_processes_equals_scoring_in_process(report, monkeypatch):
    import numpy as np

    import analysis.scores as scores_module

    table = report[0].loaded.table
    serial = scores_module.score_table(table, METRICS, jobs=1)
    monkeypatch.setattr(scores_module, "PARALLEL_MIN", 10)
    parallel = scores_module.score_table(table, METRICS, jobs=2)
    for metric in METRICS:
        assert np.array_equal(serial[metric], parallel[metric], equal_nan=True)


def test_cli_report_prints_a_summary_and_the_written_paths(sample, tmp_path, capsys):
    assert analysis_main(["report", str(sample), "--out", str(tmp_path), "--metrics", "exact_match", "--no-figures", "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    assert "exact_match [95% CI]" in out and "big-full/" in out
    assert str(tmp_path / "report.html") in out


def test_unknown_metric_exits_2_naming_the_known_ones(sample, tmp_path, capsys):
    assert analysis_main(["report", str(sample), "--out", str(tmp_path), "--metrics", "exact_matc"]) == 2
    err = capsys.readouterr().err
    assert "exact_matc" in err and "exact_match" in err and "Traceback" not in err

"""Seeds: runs that differ only in seeds are one configuration — pooled in the report, paired by
seed in `compare --seeds`, named seed twins by `compare` — and nothing else is ever pooled."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy.stats import t as student_t

from analysis.cli import main as analysis_main
from analysis.compare import compare, compare_seeds
from analysis.report import analyse, write_report
from analysis.stats import across_seeds
from bench.synthetic_runs import SyntheticRun, eval_examples, write_run
from runner.score import compute_metrics

METRICS = ["exact_match", "f1"]
EXAMPLES = eval_examples(10)
# One LoRA configuration run with three seeds (accuracy stands in for what the seed changes),
# and a zero-shot configuration run once.
LORA_SEEDS = (
    SyntheticRun("lora-s0", method="lora", seed=0, accuracy=0.5, train_seconds=100.0),
    SyntheticRun("lora-s1", method="lora", seed=1, accuracy=0.6, train_seconds=110.0),
    SyntheticRun("lora-s2", method="lora", seed=2, accuracy=0.75, train_seconds=120.0),
)
ZERO_SHOT = SyntheticRun("zero-shot", accuracy=0.3)


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.read_text().splitlines()))


def _shard_means(run: Path) -> dict[str, float]:
    """A run's metric means straight from its shards, with the runner's scorers (not analysis)."""
    table = pq.read_table(sorted((run / "predictions").glob("shard-*.parquet")))
    return compute_metrics(table, METRICS)["overall"]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    storage = tmp_path_factory.mktemp("seeded") / "runs"
    folders = {run.name: write_run(storage, run, EXAMPLES) for run in (*LORA_SEEDS, ZERO_SHOT)}
    out = storage.parent / "report"
    analysis, _ = write_report(str(storage), out, METRICS, jobs=1, show_progress=False)
    return storage, folders, analysis, out


def test_across_seeds_is_the_mean_the_sample_sd_and_a_t_interval():
    estimate = across_seeds([0.5, 0.6, 0.7])
    assert (estimate.n, estimate.over) == (3, "seeds")
    assert estimate.mean == pytest.approx(0.6, rel=1e-15) and estimate.sd == pytest.approx(0.1, rel=1e-12)
    # t(0.975, 2 degrees of freedom) = 4.302653: half-width 4.302653 × 0.1 / √3 = 0.248414.
    assert estimate.low == pytest.approx(0.6 - 0.248414, abs=1e-6) and estimate.high == pytest.approx(0.6 + 0.248414, abs=1e-6)
    one = across_seeds([0.4, None])
    assert (one.n, one.mean, one.sd, one.low, one.high) == (1, 0.4, None, None, None)
    assert across_seeds([None]).mean is None


def test_three_seeds_are_one_row_with_the_mean_sd_and_t_interval_of_the_per_seed_means(seeded):
    storage, folders, analysis, out = seeded
    configs = _rows(out / "results_by_config.csv")
    assert [(r["method"], r["n_seeds"], r["n"]) for r in configs] == [("lora", "3", "40"), ("none", "1", "40")]
    lora, zero = configs
    per_seed = [_shard_means(folders[run.name]) for run in LORA_SEEDS]
    for metric in METRICS:
        means = [m[metric] for m in per_seed]
        assert len(set(means)) == 3, "the seeds must disagree for the test to mean anything"
        mean, sd = float(np.mean(means)), float(np.std(means, ddof=1))
        half = student_t.ppf(0.975, 2) * sd / math.sqrt(3)
        assert float(lora[metric]) == pytest.approx(mean, rel=1e-12)
        assert float(lora[f"{metric}_sd"]) == pytest.approx(sd, rel=1e-12)
        assert float(lora[f"{metric}_ci95_low"]) == pytest.approx(mean - half, abs=1e-6)
        assert float(lora[f"{metric}_ci95_high"]) == pytest.approx(mean + half, abs=1e-6)
        # One seed: its mean, and no spread to report (its bootstrap interval is in results.csv).
        assert float(zero[metric]) == _shard_means(folders["zero-shot"])[metric]
        assert zero[f"{metric}_sd"] == zero[f"{metric}_ci95_low"] == ""
    assert float(lora["train_seconds"]) == 110.0, "figures that are not quality are averaged over seeds"
    assert lora["seeds"] == "train.seed=0 icl.seed=0; train.seed=1 icl.seed=0; train.seed=2 icl.seed=0"
    assert lora["runs"].split() == [f"{r.name}/{folders[r.name].name}" for r in LORA_SEEDS]


def test_results_csv_keeps_one_row_per_seed_with_its_seeds_and_configuration(seeded):
    _, folders, _, out = seeded
    rows = {r["run"]: r for r in _rows(out / "results.csv")}
    assert sorted(rows) == ["lora-s0", "lora-s1", "lora-s2", "zero-shot"]
    assert [rows[r.name]["train_seed"] for r in LORA_SEEDS] == ["0", "1", "2"]
    assert {rows[r.name]["icl_seed"] for r in LORA_SEEDS} == {"0"} and {rows[r.name]["decoding_seed"] for r in LORA_SEEDS} == {""}
    configs = {rows[r.name]["config"] for r in LORA_SEEDS}
    assert len(configs) == 1 and rows["zero-shot"]["config"] not in configs
    assert configs == {_rows(out / "results_by_config.csv")[0]["config"]}
    for run in LORA_SEEDS:
        assert float(rows[run.name]["exact_match"]) == _shard_means(folders[run.name])["exact_match"]


def test_report_shows_one_pooled_row_per_configuration_and_a_seeds_section(seeded):
    _, _, analysis, out = seeded
    (pooled,) = [s for s in analysis.pooled.configs if s.seeds]
    estimate = pooled.quality["exact_match"]
    markdown = (out / "report.md").read_text()
    model_table = markdown.split("## Model: tiny-llama", 1)[1].split("\n## ", 1)[0]
    lora_rows = [line for line in model_table.splitlines() if line.startswith("| lora |")]
    assert len(lora_rows) == 2, "one quality row and one cost row for the three seeds"
    assert f"{estimate.mean:.3f} ± {estimate.sd:.3f} [{estimate.low:.3f}, {estimate.high:.3f}]" in lora_rows[0]
    assert "| 3 |" in lora_rows[0] and "lora-s0 and 2 more seed(s) (Seeds)" in lora_rows[0]
    seeds = markdown.split("## Seeds", 1)[1].split("\n## ", 1)[0]
    assert [line.count("lora-s") for line in seeds.splitlines() if line.startswith("| tiny-llama")] == [1, 1, 1]
    assert "train.seed=0" in seeds and "icl.seed" not in seeds, "the seed column shows the fields that vary"
    assert "t-interval" in markdown.split("## How the numbers are computed", 1)[1]
    assert "3 seeds" in (out / "report.html").read_text()
    assert (out / "figures" / "bars_exact_match.png").stat().st_size > 1000


def test_runs_that_differ_in_anything_but_seeds_are_not_pooled(tmp_path, capsys):
    storage = tmp_path / "runs"
    for run in LORA_SEEDS[:2]:
        write_run(storage, run, EXAMPLES)
    # Same (model, method, shots, decoding) but another learning rate: another configuration.
    write_run(storage, SyntheticRun("lora-fast", method="lora", seed=2, learning_rate=1e-3, train_seconds=100.0), EXAMPLES)
    # Only seeds differ in the manifest, but the weights or the data did not match.
    other_weights = write_run(storage, SyntheticRun("lora-other-weights", method="lora", seed=3, model_tag="v2", train_seconds=100.0), EXAMPLES)
    other_data = write_run(storage, SyntheticRun("lora-other-data", method="lora", seed=4, data_tag="v2", train_seconds=100.0), EXAMPLES)
    assert analysis_main(["report", str(storage), "--out", str(tmp_path / "out"), "--metrics", "exact_match", "--no-figures", "--jobs", "1"]) == 0
    err = capsys.readouterr().err
    assert err.count("not pooled:") == 2 and str(other_weights / "manifest.yaml") in err and str(other_data / "manifest.yaml") in err
    assert "other model weights" in err and "different data" in err
    configs = _rows(tmp_path / "out" / "results_by_config.csv")
    assert sorted((r["n_seeds"], r["runs"].split("/")[0]) for r in configs) == [
        ("1", "lora-fast"), ("1", "lora-other-data"), ("1", "lora-other-weights"), ("2", "lora-s0"),
    ]
    assert "## Not pooled" in (tmp_path / "out" / "report.md").read_text()


def test_the_same_seeds_stored_under_two_names_are_not_pooled(tmp_path):
    storage = tmp_path / "runs"
    write_run(storage, LORA_SEEDS[0], EXAMPLES)
    write_run(storage, SyntheticRun("lora-again", method="lora", seed=0, accuracy=0.5, train_seconds=100.0), EXAMPLES)
    analysis = analyse(str(storage), ["exact_match"], jobs=1, show_progress=False)
    assert [s.n_seeds for s in analysis.pooled.configs] == [1, 1]
    (note,) = analysis.pooled.notes
    assert "same seeds (train.seed=0 icl.seed=0)" in note and "lora-again" in note and "lora-s0" in note


def test_shot_and_sampling_seeds_are_seeds_too(tmp_path):
    storage = tmp_path / "runs"
    for k in range(2):
        write_run(storage, SyntheticRun(f"two-shot-{k}", shots=2, icl_seed=k, accuracy=0.4 + 0.1 * k), EXAMPLES)
        write_run(storage, SyntheticRun(f"sample-{k}", decoding="sample", decoding_seed=k, accuracy=0.5 + 0.1 * k), EXAMPLES)
    analysis = analyse(str(storage), ["exact_match"], jobs=1, show_progress=False)
    pooled = {s.run.decoding: s for s in analysis.pooled.configs}
    assert sorted(pooled) == ["greedy", "sample"] and all(s.n_seeds == 2 for s in pooled.values())
    assert [s.run.name for s in pooled["sample"].seeds] == ["sample-0", "sample-1"]
    assert [s.run.name for s in pooled["greedy"].seeds] == ["two-shot-0", "two-shot-1"]


def test_compare_names_seed_twins_and_lists_what_else_differs(seeded, capsys):
    storage, folders, _, _ = seeded
    twins = compare(str(folders["lora-s0"]), str(folders["lora-s2"]), metrics=["exact_match"], jobs=1)
    assert twins.seed_twins and twins.differing == (("train.seed", 0, 2),)
    other = compare(str(folders["lora-s0"]), str(folders["zero-shot"]), metrics=["exact_match"], jobs=1)
    assert not other.seed_twins and ("method.kind", "lora", "none") in other.differing
    out = storage.parent / "twins.json"
    assert analysis_main(["compare", "lora-s0", "lora-s1", "--source", str(storage), "--metrics", "exact_match", "--jobs", "1", "--json", str(out)]) == 0
    assert "seed twins" in capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["seed_twins"] is True and saved["differing_fields"] == {"train.seed": [0, 1]}


@pytest.fixture(scope="module")
def two_configurations(tmp_path_factory):
    """LoRA at two learning rates: seeds 0-2 at 2e-4, seeds 0, 1 and 3 at 1e-3."""
    storage = tmp_path_factory.mktemp("configs") / "runs"
    folders = {run.name: write_run(storage, run, EXAMPLES) for run in LORA_SEEDS}
    for seed, accuracy in ((0, 0.8), (1, 0.7), (3, 0.9)):
        run = SyntheticRun(f"fast-s{seed}", method="lora", seed=seed, learning_rate=1e-3, accuracy=accuracy, train_seconds=100.0)
        folders[run.name] = write_run(storage, run, EXAMPLES)
    return storage, folders


def test_compare_seeds_pairs_two_configurations_seed_by_seed_and_over_seeds(two_configurations):
    storage, folders = two_configurations
    result = compare_seeds(str(folders["fast-s1"]), str(folders["lora-s2"]), metrics=METRICS, jobs=1)
    assert result.paired_on == ("train.seed", "icl.seed")
    assert [(p.seed, p.a.name, p.b.name) for p in result.pairs] == [
        ("train.seed=0 icl.seed=0", "fast-s0", "lora-s0"), ("train.seed=1 icl.seed=0", "fast-s1", "lora-s1"),
    ]
    assert result.differing == (("train.learning_rate", 0.001, 0.0002),)
    assert sum("only in A" in n for n in result.notes) == 1 and sum("only in B" in n for n in result.notes) == 1
    for pair in result.pairs:
        # Each seed's pair is exactly the plain comparison of its two runs.
        alone = compare(str(folders[pair.a.name]), str(folders[pair.b.name]), metrics=METRICS, jobs=1)
        assert pair.differences == alone.differences and pair.mcnemar == alone.mcnemar
    for metric in METRICS:
        per_seed = [p.differences[metric].difference for p in result.pairs]
        assert result.across_seeds[metric].mean == pytest.approx(statistics.fmean(per_seed), rel=1e-12)
        assert result.across_seeds[metric].sd == pytest.approx(statistics.stdev(per_seed), rel=1e-12)
        over = result.over_seeds[metric]
        # Every example in both seeds: the mean over examples of seed-averaged differences is the
        # mean of the per-seed differences, and its bootstrap interval surrounds it.
        assert over.n == result.shared == 40 and over.difference == pytest.approx(statistics.fmean(per_seed), abs=1e-12)
        assert over.low <= over.difference <= over.high


def test_compare_seeds_cli_writes_every_pair_and_refuses_seeds_of_one_configuration(two_configurations, capsys):
    storage, _ = two_configurations
    out = storage.parent / "seeds.json"
    code = analysis_main(["compare", "fast-s0", "lora-s0", "--source", str(storage), "--seeds", "--metrics", "exact_match", "--jobs", "1", "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "2 seed pair(s), paired on train.seed icl.seed" in printed and "all seeds" in printed
    saved = json.loads(out.read_text())
    assert [s["seed"] for s in saved["seeds"]] == ["train.seed=0 icl.seed=0", "train.seed=1 icl.seed=0"]
    assert set(saved["over_seeds"]) == set(saved["across_seeds"]) == {"exact_match"}
    assert analysis_main(["compare", "lora-s0", "lora-s1", "--source", str(storage), "--seeds", "--jobs", "1"]) == 2
    assert "seeds of one configuration" in capsys.readouterr().err

"""Bootstrap intervals, paired bootstrap and McNemar: hand-worked values and reproducibility."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from analysis.cli import main as analysis_main
from analysis.compare import compare
from analysis.stats import bootstrap_mean, generator, mcnemar, paired_bootstrap, resample_means
from bench.synthetic_runs import SyntheticRun, eval_examples, write_run


def test_bootstrap_ci_contains_the_mean():
    rng = np.random.default_rng(1)
    for values in (rng.integers(0, 2, 200).astype(float), rng.random(500), np.round(rng.random(5000), 1)):
        estimate = bootstrap_mean(values, "contains")
        assert estimate.low < estimate.mean < estimate.high
        assert estimate.mean == math.fsum(values) / len(values)


def test_bootstrap_ci_is_reproducible_and_depends_only_on_its_label_and_seed():
    values = np.random.default_rng(2).random(300)
    first = bootstrap_mean(values, "run/abc|f1")
    bootstrap_mean(values, "some other group drawn in between")
    assert bootstrap_mean(values, "run/abc|f1") == first
    assert bootstrap_mean(values, "run/abc|f1", seed=1) != first
    assert bootstrap_mean(values, "run/abd|f1") != first


def test_missing_scores_are_left_out_of_the_mean_and_n():
    estimate = bootstrap_mean(np.array([1.0, np.nan, 0.0, 1.0]), "missing")
    assert (estimate.n, estimate.mean) == (3, 2 / 3)
    assert bootstrap_mean(np.array([np.nan]), "none").mean is None


def test_bootstrap_ci_of_a_proportion_matches_normal_theory():
    # n = 10,000 draws of p = 0.3: the percentile interval is p ± 1.96·sqrt(p(1-p)/n) to within MC error.
    values = np.zeros(10_000)
    values[:3000] = 1
    estimate = bootstrap_mean(values, "normal")
    half = 1.96 * math.sqrt(0.3 * 0.7 / 10_000)
    assert estimate.low == pytest.approx(0.3 - half, abs=0.0015) and estimate.high == pytest.approx(0.3 + half, abs=0.0015)


def test_counting_distinct_values_resamples_like_drawing_indices():
    # Few distinct values take the multinomial path; the same data jittered apart takes the index path.
    values = np.repeat([0.0, 0.5, 1.0], [600, 300, 100])
    jittered = values + np.arange(len(values)) * 1e-12
    by_counts = resample_means(values, generator(0, "a"), 4000)
    by_indices = resample_means(jittered, generator(0, "b"), 4000)
    assert by_counts.mean() == pytest.approx(values.mean(), abs=0.002)
    assert by_counts.std() == pytest.approx(by_indices.std(), rel=0.06)
    assert by_counts.std() == pytest.approx(values.std() / math.sqrt(len(values)), rel=0.06)


@pytest.mark.parametrize(
    ("only_a", "only_b", "expected"),
    [
        (8, 2, 2 * (1 + 10 + 45) / 1024),  # 2·P(X ≤ 2), X ~ Binomial(10, 1/2)
        (10, 0, 2 / 1024),
        (5, 5, 1.0),
        (0, 0, 1.0),
        (1, 0, 1.0),
    ],
)
def test_mcnemar_exact_p_values_match_hand_computed_binomial_tails(only_a, only_b, expected):
    a = np.array([1] * only_a + [0] * only_b + [1] * 7 + [0] * 3)
    b = np.array([0] * only_a + [1] * only_b + [1] * 7 + [0] * 3)
    test = mcnemar(a, b)
    assert (test.only_a, test.only_b, test.both, test.neither) == (only_a, only_b, 7, 3)
    assert test.p_value == pytest.approx(expected, rel=1e-12)


def test_paired_bootstrap_of_identical_runs_is_zero_with_p_one():
    values = np.random.default_rng(3).random(100)
    result = paired_bootstrap(values, values.copy(), "same")
    assert (result.difference, result.low, result.high, result.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_paired_bootstrap_when_a_is_always_better_has_p_zero():
    a = np.ones(50)
    b = np.zeros(50)
    result = paired_bootstrap(a, b, "better")
    assert (result.difference, result.low, result.high, result.p_value) == (1.0, 1.0, 1.0, 0.0)


def test_paired_bootstrap_keeps_pairs_together():
    # Large per-example spread shared by both runs, constant +0.1 for A: pairing cancels the spread.
    base = np.random.default_rng(4).random(400)
    result = paired_bootstrap(base + 0.1, base, "pairs")
    assert result.low == pytest.approx(0.1) and result.high == pytest.approx(0.1)


def _hand_built(tmp_path):
    """40 yes/no questions: both right on 20, only A on 8, only B on 2, neither on 10."""
    examples = eval_examples(40, datasets=("boolq",))
    ids = [e.id for e in examples]
    storage = tmp_path / "runs"
    a = write_run(storage, SyntheticRun("run-a", correct=frozenset(ids[:28])), examples)
    b = write_run(storage, SyntheticRun("run-b", correct=frozenset(ids[:20] + ids[28:30])), examples)
    return storage, a, b


def test_compare_on_hand_built_runs_gives_the_expected_counts_and_p_values(tmp_path):
    storage, a, b = _hand_built(tmp_path)
    result = compare(str(a), str(b), metrics=["exact_match"], jobs=1)
    assert result.shared == 40
    m = result.mcnemar
    assert (m.both, m.only_a, m.only_b, m.neither) == (20, 8, 2, 10)
    assert m.p_value == pytest.approx(0.109375, rel=1e-12)
    diff = result.differences["exact_match"]
    assert (diff.mean_a, diff.mean_b, diff.difference) == (0.7, 0.55, 0.15)  # 6 net wins over 40, fsum-exact
    assert diff.low < diff.difference < diff.high and 0 < diff.p_value < 1


def test_compare_cli_by_name_within_a_source_prints_and_writes_json(tmp_path, capsys):
    storage, _, _ = _hand_built(tmp_path)
    out = tmp_path / "comparison.json"
    code = analysis_main(["compare", "run-a", "run-b", "--source", str(storage), "--metrics", "exact_match", "--json", str(out), "--jobs", "1"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "40 shared examples" in printed and "only A 8" in printed and "p = 0.109" in printed
    saved = json.loads(out.read_text())
    assert saved["mcnemar"]["p_value"] == pytest.approx(0.109375) and saved["mcnemar"]["correct"] == "exact_match >= 1"


def test_compare_pairs_only_the_examples_both_runs_answered(tmp_path):
    examples = eval_examples(10, datasets=("boolq",))
    storage = tmp_path / "runs"
    a = write_run(storage, SyntheticRun("a", accuracy=1.0), examples)
    b = write_run(storage, SyntheticRun("b", accuracy=0.0, max_eval_examples=6), examples)
    result = compare(str(a), str(b), metrics=["exact_match"], jobs=1)
    assert (result.n_a, result.n_b, result.shared) == (10, 6, 6)
    assert result.mcnemar.only_a == 6 and result.differences["exact_match"].difference == 1.0

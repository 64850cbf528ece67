"""Which setup to pick: what a configuration costs, the accuracy-versus-cost front and the words
that state it, dollars, the break-even, identical answers of decoding twins, loss curves, labels."""

from __future__ import annotations

import math
import random
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis.choice import OVERALL, Option, Scope, advice, cost_front
from analysis.cli import main as analysis_main
from analysis.cost import Cost, cost_of
from analysis.report import analyse
from analysis.scores import distinct_inputs
from analysis.stats import Estimate
from analysis.train_logs import parse_train_log
from bench.synthetic_runs import SyntheticRun, eval_examples, train_log, write_run
from runner.paths import TrainingKeys

EXAMPLES = eval_examples(6)


def _analyse(storage: Path, *runs: SyntheticRun, examples=EXAMPLES):
    for run in runs:
        write_run(storage, run, examples)
    return analyse(str(storage), ["exact_match"], jobs=1, show_progress=False)


def _shards(folder: Path) -> pa.Table:
    return pa.concat_tables(pq.read_table(p) for p in sorted((folder / "predictions").glob("shard-*.parquet")))


def test_cost_is_training_wall_time_times_devices_plus_batch_seconds_per_thousand_questions(tmp_path):
    folder = write_run(tmp_path / "runs", SyntheticRun("tuned", method="lora", train_seconds=1800.0, devices=2), EXAMPLES)
    (summary,) = analyse(str(tmp_path / "runs"), ["exact_match"], jobs=1, show_progress=False).runs
    rows = _shards(folder)
    # Every row repeats its batch's wall time; each batch counts once.
    batches = dict(zip(rows.column("batch").to_pylist(), rows.column("batch_seconds").to_pylist()))
    cost = cost_of(summary)
    assert cost.train_gpu_hours == 1800 * 2 / 3600 == 1.0
    assert cost.eval_gpu_hours_per_1000 == pytest.approx(math.fsum(batches.values()) / rows.num_rows * 1000 / 3600, rel=1e-12)
    assert cost.gpu_hours == cost.train_gpu_hours + cost.eval_gpu_hours_per_1000
    assert cost.dollars(2.5) == pytest.approx(cost.gpu_hours * 2.5) and cost.dollars(None) is None


def test_a_configuration_that_trained_nothing_costs_only_its_evaluation(tmp_path):
    (summary,) = _analyse(tmp_path / "runs", SyntheticRun("prompted", shots=2)).runs
    cost = cost_of(summary)
    assert cost.train_gpu_hours == 0.0 and cost.gpu_hours == cost.eval_gpu_hours_per_1000 > 0


def test_each_question_is_charged_its_share_of_its_batch_so_the_formats_add_up_to_the_run(tmp_path):
    analysis = _analyse(tmp_path / "runs", SyntheticRun("mixed", batch_size=5), SyntheticRun("spec", decoding="speculative", acceptance=0.5))
    for run in analysis.runs:
        parts = [s for s in analysis.slices if s.run is run.run and s.slice_kind == "format"]
        spent = math.fsum(s.speed["eval_device_seconds_per_example"] * s.n for s in parts)
        assert len(parts) == 4 and spent == pytest.approx(run.speed["eval_device_seconds_per_example"] * run.n, rel=1e-12)


def _option(accuracy: float, cost: float, low: float | None = None, number: int = 0) -> Option:
    config = SimpleNamespace(run=SimpleNamespace(model="m", label=f"config {number}"))
    return Option(config, Estimate(10, accuracy, low, None if low is None else 2 * accuracy - low), Cost(0.0, cost))  # type: ignore[arg-type]


def test_the_cost_front_is_every_option_no_other_beats_on_both_accuracy_and_cost():
    rng = random.Random(14)
    for _ in range(200):
        options = [_option(rng.random(), rng.random()) for _ in range(rng.randint(1, 12))]
        unbeaten = [
            o for o in options
            if not any(p.accuracy.mean >= o.accuracy.mean and p.cost.gpu_hours <= o.cost.gpu_hours and p is not o for p in options)
        ]
        assert sorted(map(id, cost_front(options))) == sorted(map(id, unbeaten))
        front = cost_front(options)
        assert [o.cost.gpu_hours for o in front] == sorted(o.cost.gpu_hours for o in front)


def test_the_cost_front_drops_ties_that_cost_more_or_score_the_same():
    cheap, twin, better, same_but_dearer = _option(0.5, 1.0), _option(0.5, 1.0), _option(0.7, 2.0), _option(0.7, 4.0)
    assert cost_front([cheap, twin, better, same_but_dearer]) == [cheap, better]


def _scope(*options: Option, front: list[Option] | None = None) -> Scope:
    return Scope(OVERALL, tuple(options), tuple(cost_front(options) if front is None else front), ())


def test_advice_picks_the_most_accurate_and_names_the_cheaper_one_inside_its_interval():
    cheapest, close, beaten, top = _option(0.4, 0.1, number=1), _option(0.75, 1.0, number=2), _option(0.5, 5.0, number=4), _option(0.8, 10.0, low=0.7, number=3)
    numbers = {id(o.config.run): n for o, n in ((cheapest, 1), (close, 2), (top, 3), (beaten, 4))}
    text = advice(_scope(cheapest, close, beaten, top), numbers, {}, 2.0)
    assert text.startswith("For all questions (4 configurations with a cost): pick #3 m · config 3 (0.800) if you can spend 10.0 GPU-hours ($20.00)")
    assert "#2 m · config 2 (0.750) is as accurate within the 95% interval of #3's score, for 10% of the cost (1.00 GPU-hours ($2.00))" in text
    assert "the cheapest is #1 m · config 1 (0.400, 0.100 GPU-hours ($0.20))" in text
    assert text.endswith("The other one is beaten on both accuracy and cost by one of these.")


def test_advice_for_an_option_both_cheapest_and_most_accurate_says_so():
    only, worse = _option(0.9, 1.0, number=1), _option(0.5, 2.0, number=2)
    text = advice(_scope(only, worse), {id(only.config.run): 1, id(worse.config.run): 2}, {}, None)
    assert "pick #1 m · config 1: it is the most accurate (0.900) and the cheapest (1.00 GPU-hours). It beats the other 1 on both." in text
    assert "$" not in text


def test_configurations_that_answered_other_questions_are_left_out_of_the_front(tmp_path):
    analysis = _analyse(tmp_path / "runs", SyntheticRun("all", accuracy=0.3), SyntheticRun("also-all", shots=2, accuracy=0.5),
                        SyntheticRun("few", shots=4, accuracy=0.9, max_eval_examples=2))
    overall = next(s for s in analysis.scopes if s.name == OVERALL)
    assert [c.run.name for c in overall.elsewhere] == ["few"]
    assert "few" not in {o.config.run.name for o in overall.options}
    few = analysis.numbers[id(overall.elsewhere[0].run)]
    assert f"Not compared here, having answered other questions: #{few}." in advice(overall, analysis.numbers, {}, None)


def test_price_per_gpu_hour_adds_dollars_to_the_csv_and_the_report(tmp_path, capsys):
    storage = tmp_path / "runs"
    for run in (SyntheticRun("prompted", shots=2), SyntheticRun("tuned", method="lora", train_seconds=90.0)):
        write_run(storage, run, EXAMPLES)
    assert analysis_main(["report", str(storage), "--out", str(tmp_path / "out"), "--metrics", "exact_match", "--no-figures", "--jobs", "1",
                          "--price-per-gpu-hour", "2.5"]) == 0
    import csv

    rows = list(csv.DictReader((tmp_path / "out" / "results.csv").read_text().splitlines()))
    for row in rows:
        assert float(row["cost_usd"]) == pytest.approx(float(row["cost_gpu_hours"]) * 2.5)
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "## Which to pick" in markdown and "Dollars at $2.50 per GPU-hour" in markdown and "| cost $ |" in markdown


def test_break_even_is_where_the_fine_tuned_line_from_its_training_cost_meets_the_k_shot_line(tmp_path):
    analysis = _analyse(tmp_path / "runs", SyntheticRun("prompted", shots=4), SyntheticRun("tuned", method="lora", train_seconds=120.0, devices=2))
    (payback,) = analysis.paybacks
    assert payback.train_gpu_seconds == 240.0, "training occupies both devices"

    def gap(queries: int) -> float:
        """k-shot cost minus fine-tuned cost after `queries` queries: negative until training is repaid."""
        return queries * payback.prompted_seconds_per_query - (payback.train_gpu_seconds + queries * payback.tuned_seconds_per_query)

    assert gap(payback.breakeven_queries) >= -1e-9 > gap(payback.breakeven_queries - 1)


def test_a_decoding_twin_with_greedys_answers_shares_all_of_them_and_another_fewer(tmp_path):
    analysis = _analyse(
        tmp_path / "runs",
        SyntheticRun("base", accuracy=0.5),
        SyntheticRun("lookup", decoding="prompt_lookup", accuracy=0.5, answers_as="base"),
        SyntheticRun("sampled", decoding="sample", accuracy=0.5, decoding_seed=3),
    )
    shares = {u.run.run.decoding: (u.identical, u.compared) for u in analysis.speed_ups}
    assert shares["prompt_lookup"] == (24, 24)
    table = analysis.loaded.table
    base, sampled = (next(r for r in analysis.loaded.runs if r.name == name) for name in ("base", "sampled"))
    same = sum(a == b for a, b in zip(table.column("prediction").to_pylist()[base.start:base.stop], table.column("prediction").to_pylist()[sampled.start:sampled.stop]))
    assert shares["sample"] == (same, 24) and same < 24
    from analysis.content import build_document
    from analysis.markdown import render_markdown

    assert "| 100.0% (24/24) |" in render_markdown(build_document(analysis, []))


def test_a_training_shared_by_two_evaluations_is_one_curve_with_its_logged_losses(tmp_path):
    lora = SyntheticRun("lora", method="lora", train_seconds=60.0)
    analysis = _analyse(tmp_path / "runs", lora, SyntheticRun("lora", method="lora", train_seconds=60.0, decoding="speculative", acceptance=0.5),
                        SyntheticRun("lora", method="lora", train_seconds=60.0, seed=1))
    assert sorted(len(c.runs) for c in analysis.curves) == [1, 2]
    train, heldout, bad = parse_train_log(train_log(lora))
    (shared,) = [c for c in analysis.curves if c.digest == lora.training]
    assert shared.train == tuple(sorted(train.items())) and shared.heldout == tuple(sorted(heldout.items())) and not bad
    assert [s for s, _ in shared.heldout] == [0, 5, 10] and len(shared.train) == 10


def test_a_repeated_step_keeps_its_last_value_and_garbled_lines_are_counted():
    text = '{"step": 5, "loss": 2.0}\n{"step": 5, "loss": 1.5}\nnot json\n{"step": 6, "eval_loss": 1.2}\n["step"]\n{"step": 7, "loss": true}\n'
    train, heldout, bad = parse_train_log(text)
    assert train == {5: 1.5} and heldout == {6: 1.2} and bad == [3, 5]


def test_a_training_without_a_usable_train_log_gets_a_note_instead_of_a_curve(tmp_path):
    storage = tmp_path / "runs"
    missing = SyntheticRun("missing", method="lora", train_seconds=60.0, train_log=False)
    garbled = SyntheticRun("garbled", method="ia3", train_seconds=60.0)
    analysis = _analyse(storage, missing, garbled)
    assert [c.digest for c in analysis.curves] == [garbled.training]
    (note,) = analysis.curve_notes
    assert f"{missing.training}/train_log.jsonl: missing; no loss curve for missing/" in note
    (storage / TrainingKeys(garbled.training).train_log).write_text("nothing to see\n")
    analysis = analyse(str(storage), ["exact_match"], jobs=1, show_progress=False)
    assert analysis.curves == []
    assert f"{garbled.training}/train_log.jsonl: line(s) 1 are not log records" in "\n".join(analysis.curve_notes)


def test_run_labels_show_the_prompt_format_and_a_protocol_other_than_generate(tmp_path):
    analysis = _analyse(
        tmp_path / "runs",
        SyntheticRun("old"),
        SyntheticRun("plain", prompt_format="plain", protocol="generate"),
        SyntheticRun("ranked", prompt_format="chat", protocol="loglikelihood"),
    )
    labels = {r.name: r.label for r in analysis.loaded.runs}
    assert labels == {"old": "none · 0-shot · greedy", "plain": "none · 0-shot · greedy · plain", "ranked": "none · 0-shot · greedy · chat · loglikelihood"}


def test_label_placement_keeps_a_crowded_fronts_labels_apart():
    from matplotlib.text import Text

    from analysis.plot_style import place_labels, pyplot, staircase

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5), layout="constrained")
    # 14 points a few pixels apart: the nearest spot of every label would cover its neighbour's.
    points = [(1 + 0.06 * i, 0.4 + 0.02 * i) for i in range(14)]
    ax.plot(*zip(*staircase(points)))
    ax.set_xlim(0.5, 3.5)
    ax.set_ylim(0.2, 1.0)
    labels = place_labels(ax, points, [f"#{100 + i}" for i in range(14)], lines=[staircase(points)])
    renderer = fig.canvas.get_renderer()
    for label in labels:
        label.update_positions(renderer)
    # The text alone: an annotation's own extent includes its leader line.
    boxes = [Text.get_window_extent(label, renderer) for label in labels]
    frame = ax.get_window_extent(renderer)
    assert len({label.xyann for label in labels}) > 1, "the crowd made labels move"
    for i, box in enumerate(boxes):
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
        for other in boxes[i + 1:]:
            assert not box.overlaps(other), (box, other)
    plt.close(fig)


def test_rows_that_differ_only_in_their_ranked_log_probabilities_are_scored_apart():
    base = {"dataset": ["arc_easy"] * 3, "format": ["multiple_choice"] * 3, "prediction": ["red"] * 3, "references": [["red"]] * 3, "options": [["red", "blue"]] * 3}
    table = pa.table({**base, "choices": [["red", "blue"]] * 3, "choice_logprobs": [[-1.0, -2.0], [-2.0, -1.0], [-1.0, -2.0]]})
    codes, _ = distinct_inputs(table)
    assert codes[0] == codes[2] != codes[1]
    assert len(set(distinct_inputs(pa.table(base))[0])) == 1, "tables without the columns still score"

"""An evaluated example whose input is also in the train split the run trains on (or draws shots
from) is counted per dataset, warned about and recorded in provenance.json: its score is not held out.
The check compares inputs, whatever the dataset (UnifiedQA's MultiRC encoding is noted to repeat its questions)."""

from __future__ import annotations

import json
import shutil

from analysis.cli import main as analysis_main
from conftest import SYNTHETIC, stage_folders, write_manifest
from runner.cli import main
from runner.context import train_eval_overlap
from runner.data import Example


def _example(dataset: str, split: str, text: str) -> Example:
    return Example(f"{dataset}/{split}/{text}", dataset, split, "yes_no", text, text, (), "", ("yes",), 1)


def test_overlap_counts_evaluated_inputs_found_in_the_same_datasets_training_examples():
    train = [_example("boolq", "train", "a"), _example("boolq", "train", "b"), _example("multirc", "train", "q")]
    evaluate = [_example("boolq", "dev", "a"), _example("boolq", "dev", "c"), _example("multirc", "dev", "q"), _example("squad1_1", "dev", "a")]
    # squad1_1 has no training examples read: nothing to overlap with, so it is not listed.
    assert train_eval_overlap(train, evaluate) == {"boolq": {"evaluated": 2, "in_train": 1}, "multirc": {"evaluated": 1, "in_train": 1}}
    assert train_eval_overlap([], evaluate) == {}


def test_a_run_training_on_the_evaluated_questions_warns_and_records_the_overlap(small_data, tiny_models, tmp_path, capsys):
    data = shutil.copytree(small_data, tmp_path / "data")
    # As UnifiedQA's MultiRC: the dev file holds training questions.
    train_lines = (data / "synthetic_yes_no" / "train.tsv").read_text().splitlines(keepends=True)
    (data / "synthetic_yes_no" / "dev.tsv").write_text("".join(train_lines[:6]))
    manifest = write_manifest(
        tmp_path / "manifests", "overlapping",
        model={"path": str(tiny_models["llama"])},
        data={"root": str(data), "datasets": SYNTHETIC},
        method={"kind": "lora", "r": 2, "alpha": 4, "target_modules": "attention"},
        train={"steps": 1, "batch_size": 2, "learning_rate": 1e-3, "heldout_examples": 0},
        decoding={"kind": "greedy", "max_new_tokens": 2, "batch_size": 8},
    )
    capsys.readouterr()
    assert main(["run", str(manifest), "--storage", str(tmp_path / "runs")]) == 0
    err = capsys.readouterr().err
    assert "warning: 6 of the 6 evaluated synthetic_yes_no examples have the input of an example in the train split this run trains on" in err
    assert "synthetic_multiple_choice" not in err
    evaluation, _ = stage_folders(manifest, tmp_path / "runs")
    recorded = json.loads((evaluation / "provenance.json").read_text())["train_eval_overlap"]
    assert recorded["synthetic_yes_no"] == {"evaluated": 6, "in_train": 6}
    assert all(recorded[d] == {"evaluated": 6, "in_train": 0} for d in SYNTHETIC[1:])

    # The report names the run and the dataset under "Not held out".
    assert analysis_main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "report")]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    section = report.split("## Not held out", 1)[1].split("\n## ", 1)[0]
    assert f"overlapping ({evaluation.name}): 6 of 6 evaluated synthetic_yes_no examples" in section
    assert "synthetic_multiple_choice" not in section


def test_a_zero_shot_run_reads_no_train_split_and_records_no_overlap(tiny_manifest, tmp_path, capsys):
    manifest = tiny_manifest("zero-shot-overlap")
    assert main(["run", str(manifest), "--storage", str(tmp_path / "runs")]) == 0
    assert "warning:" not in capsys.readouterr().err
    evaluation, _ = stage_folders(manifest, tmp_path / "runs")
    assert json.loads((evaluation / "provenance.json").read_text())["train_eval_overlap"] == {}

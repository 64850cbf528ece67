"""A user's own JSONL data runs end to end; its mistakes are reported at FILE:LINE with exit 2."""

from __future__ import annotations

import json
import shutil

from conftest import REPO, stage_folders
from runner.cli import main

CUSTOM = REPO / "data" / "custom"


def test_jsonl_data_trains_evaluates_and_is_scored(tiny_manifest, tmp_path):
    manifest = tiny_manifest(
        "own-data", data={"format": "jsonl", "root": str(CUSTOM), "datasets": ["trivia"]},
        method={"kind": "lora", "r": 4, "alpha": 8, "target_modules": "attention"}, icl={"shots": 2, "strategy": "per_dataset"},
        train={"steps": 2, "batch_size": 4, "heldout_examples": 4, "save_steps": 2},
    )
    storage = tmp_path / "runs"
    assert main(["run", str(manifest), "--storage", str(storage)]) == 0
    run, training = stage_folders(manifest, storage)
    metrics = json.loads((run / "metrics.json").read_text())
    dev_lines = (CUSTOM / "trivia" / "dev.jsonl").read_text().splitlines()
    assert metrics["overall"]["n"] == len([line for line in dev_lines if line.strip()])
    assert set(metrics["by_format"]) == {"yes_no", "multiple_choice", "extractive", "abstractive"}
    assert metrics["by_dataset"].keys() == {"trivia"} and metrics["overall"]["f1"] is not None
    provenance = json.loads((run / "provenance.json").read_text())
    assert set(provenance["data"]) == {"trivia/train.jsonl", "trivia/dev.jsonl"}
    assert (training / "_SUCCESS").is_file()


def test_jsonl_mistakes_are_reported_at_their_lines_before_anything_loads(tiny_manifest, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(CUSTOM, root)
    dev = root / "trivia" / "dev.jsonl"
    good = dev.read_text().splitlines()
    dev.write_text("\n".join([
        good[0],
        '{"question": "Who wrote it?"}',
        '{"question": "Which one?", "answers": "blue"}',
        '{"question": "Broken", "answers": ["x"]',
        *good[1:],
    ]) + "\n")
    manifest = tiny_manifest("own-data-broken", data={"format": "jsonl", "root": str(root), "datasets": ["trivia"]})
    assert main(["run", str(manifest), "--storage", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert f"{dev}:2: " in err and "answers" in err
    assert f"{dev}:3: " in err and "answers must be a list" in err
    assert f"{dev}:4: " in err and "invalid JSON" in err
    assert "Traceback" not in err and not (tmp_path / "runs").exists()


def _pool(tmp_path, train_lines: dict[str, int]):
    """JSONL data: per dataset, that many train questions and three dev questions."""
    root = tmp_path / "pool"
    for dataset, n in train_lines.items():
        folder = root / dataset
        folder.mkdir(parents=True)
        for split, count in (("train", n), ("dev", 3)):
            rows = [{"question": f"{dataset} {split} question {i}?", "answers": [f"answer {i}"]} for i in range(count)]
            (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_as_many_shots_as_train_examples_is_valid_and_every_prompt_holds_them(tiny_manifest, tmp_path, capsys):
    root = _pool(tmp_path, {"tiny": 2})
    manifest = tiny_manifest("two-of-two", data={"format": "jsonl", "root": str(root), "datasets": ["tiny"]}, icl={"shots": 2})
    assert main(["validate", str(manifest)]) == 0
    storage = tmp_path / "runs"
    assert main(["run", str(manifest), "--storage", str(storage)]) == 0
    icl = json.loads((stage_folders(manifest, storage)[0] / "metrics.json").read_text())["icl"]
    assert icl == {"shots_requested": 2, "rows_with_fewer_shots": 0, "shots_used_min": 2, "shots_used_mean": 2.0}


def test_more_shots_than_train_examples_is_refused_at_validation_at_its_line(tiny_manifest, tmp_path, capsys):
    root = _pool(tmp_path, {"tiny": 2})
    manifest = tiny_manifest("three-of-two", data={"format": "jsonl", "root": str(root), "datasets": ["tiny"]}, icl={"shots": 3})
    assert main(["validate", str(manifest)]) == 2
    line = next(i for i, text in enumerate(manifest.read_text().splitlines(), 1) if "shots: 3" in text)
    assert f"{manifest}:{line}: icl.shots: 3 shots need at least as many train examples; the train split has 2" in capsys.readouterr().err


def test_small_dataset_pool_is_noted_and_its_short_prompts_are_counted(tiny_manifest, tmp_path, capsys):
    root = _pool(tmp_path, {"big": 6, "small": 1})
    manifest = tiny_manifest("short-pool", data={"format": "jsonl", "root": str(root), "datasets": ["big", "small"]},
                             icl={"shots": 3, "strategy": "per_dataset"})
    assert main(["validate", str(manifest)]) == 0
    assert "small has 1 train example(s), so its queries get 1 shot(s), not 3" in capsys.readouterr().err
    storage = tmp_path / "runs"
    assert main(["run", str(manifest), "--storage", str(storage)]) == 0
    icl = json.loads((stage_folders(manifest, storage)[0] / "metrics.json").read_text())["icl"]
    assert icl["rows_with_fewer_shots"] == 3 and icl["shots_used_min"] == 1, "the three 'small' queries held one shot each"
    from analysis.cli import main as analysis_main

    assert analysis_main(["report", str(storage), "--out", str(tmp_path / "report"), "--no-figures"]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## Fewer shots than asked" in report and "3 of 6 prompts held fewer than the 3 shots asked (as few as 1)" in report

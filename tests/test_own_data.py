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

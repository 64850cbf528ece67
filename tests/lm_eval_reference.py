"""lm-evaluation-harness as a reference for log-likelihood multiple choice, run fully offline.

Items become a local JSONL task (no hub dataset, no built-in task) scored by lm-eval's `hf` model
on a local folder, float32 on CPU; per-choice log-likelihoods are read back from its logged samples.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import yaml

# Nothing here needs the network: the task reads a local JSONL through datasets' packaged `json`
# builder and the model is a local folder. lm-eval still makes one hub call after scoring
# (HFLM.get_model_info -> HfApi().model_info(repo_id=<the folder>), failures swallowed); an
# absolute path fails hub-id validation before any request, and offline mode turns any other
# stray call into an immediate error instead of a wait on a network timeout. Both variables are
# read when huggingface_hub / datasets are first imported, so they are set at import of this module
# (conftest.py sets HF_HUB_OFFLINE earlier still, before anything imports huggingface_hub).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

TASK = "qabench_loglikelihood_reference"


@dataclass(frozen=True)
class ItemResult:
    """lm-eval's view of one item: summed log-prob of " " + each choice, and the item's acc / acc_norm."""

    loglikelihoods: list[float]
    acc: float
    acc_norm: float


def write_task(folder: Path, items: Sequence[tuple[str, Sequence[str], int]]) -> Path:
    """Write items as test.jsonl and a multiple-choice task YAML over it into `folder`; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "test.jsonl"
    with data.open("w") as handle:
        for prompt, choices, gold in items:
            handle.write(json.dumps({"prompt": prompt, "choices": list(choices), "gold": int(gold)}) + "\n")
    task = {
        "task": TASK,
        # The packaged `json` builder reads the file; no hub lookup. The cache goes beside the data
        # so parallel test sessions share nothing in ~/.cache/huggingface/datasets.
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(folder / "datasets-cache")},
        "test_split": "test",
        "output_type": "multiple_choice",
        # Bare field names, not "{{prompt}}" / "{{choices}}": lm-eval returns doc[field] verbatim,
        # while a template goes through Jinja and, for choices, ast.literal_eval of the rendered list.
        "doc_to_text": "prompt",
        "doc_to_choice": "choices",
        "doc_to_target": "gold",
        "target_delimiter": " ",
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
    }
    (folder / f"{TASK}.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    return folder


def lm_eval_choice_loglikelihoods(
    model_folder: Path, items: Sequence[tuple[str, Sequence[str], int]], tmp_path: Path, batch_size: int = 32
) -> list[ItemResult]:
    """Score (prompt, choices, gold index) items with lm-eval's `hf` model on a local folder, in item order."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    folder = write_task(Path(tmp_path) / "lm_eval_task", items)
    # include_defaults=False: only our YAML is indexed, not the thousands of built-in tasks.
    manager = TaskManager(include_path=str(folder), include_defaults=False)
    results = lm_eval.simple_evaluate(
        model="hf",
        # A dict, not "pretrained=...,dtype=...": the string form splits on "," and "=" in the path.
        model_args={"pretrained": str(Path(model_folder).resolve()), "dtype": "float32", "device": "cpu"},
        tasks=[TASK],
        task_manager=manager,
        num_fewshot=0,
        batch_size=batch_size,
        log_samples=True,
        # Per-item values are what we compare; the default 100,000 bootstrap resamples cost time.
        bootstrap_iters=0,
        # Scoring is deterministic; None keeps simple_evaluate off the process's global random,
        # numpy and torch seeds, which it would otherwise reset mid test session.
        random_seed=None,
        numpy_random_seed=None,
        torch_random_seed=None,
    )
    samples = sorted(results["samples"][TASK], key=lambda sample: sample["doc_id"])
    assert [sample["doc_id"] for sample in samples] == list(range(len(items))), "lm-eval dropped or repeated items"
    out = []
    for sample, (prompt, choices, _) in zip(samples, items):
        # filtered_resps: one (loglikelihood, is_greedy) per choice, in choice order, after the
        # `none` filter (take_first of each resps list) that a multiple-choice task applies.
        assert sample["doc"]["prompt"] == prompt and list(sample["doc"]["choices"]) == list(choices)
        assert [tuple(args) for args in sample["arguments"]] == [(prompt, " " + choice) for choice in choices]
        loglikelihoods = [float(ll) for ll, _greedy in sample["filtered_resps"]]
        out.append(ItemResult(loglikelihoods, float(sample["acc"]), float(sample["acc_norm"])))
    return out

"""The log-likelihood protocol: choices ranked by summed log-probability, exactly as a direct
forward pass computes it, for every method, with shots and the shared-prefix path; bad inputs
refused at validation."""

from __future__ import annotations

import json
import math

import pytest

from conftest import stage_folders
from runner.cli import main
from runner.shards import decode_shard

MC_YES_NO = ["synthetic_multiple_choice", "synthetic_yes_no"]


def _rows(run):
    rows = []
    for shard in sorted((run / "predictions").glob("*.parquet")):
        rows += decode_shard(shard.read_bytes(), str(shard)).to_pylist()
    return rows


def _direct_logprob(model, tokenizer, prompt: str, choice: str) -> float:
    """log P(" choice" | prompt) by one unbatched, unpadded forward pass of the whole text."""
    import torch

    context = tokenizer(prompt)["input_ids"]
    whole = tokenizer(prompt + " " + choice)["input_ids"]
    tail = whole[len(context):]
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([context + tail])).logits[0].float()
    logprobs = torch.log_softmax(logits[len(context) - 1 : -1], dim=-1)
    return sum(logprobs[i, token].item() for i, token in enumerate(tail))




@pytest.fixture
def loglikelihood_manifest(tiny_manifest, small_data):
    def make(name, **overrides):
        sections = {
            "data": {"root": str(small_data), "datasets": MC_YES_NO},
            "eval": {"shard_size": 5, "protocol": "loglikelihood"},
            "icl": {"chat_template": "never"},
            **overrides,
        }
        return tiny_manifest(name, **sections)

    return make


@pytest.mark.parametrize("path", ["shared_prefix", "left_padded"])
def test_each_choice_logprob_equals_a_direct_unpadded_forward_pass_and_the_best_is_predicted(loglikelihood_manifest, tmp_path, tiny_models, monkeypatch, path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from runner.prefix_cache import PrefixCache

    if path == "left_padded":  # what methods that cannot share a prefix (prompt tuning) get
        monkeypatch.setattr(PrefixCache, "tail_logits", lambda self, *a: None)
    manifest = loglikelihood_manifest(f"ll-none-{path}", decoding={"kind": "greedy", "batch_size": 4})
    storage = tmp_path / "runs"
    assert main(["run", str(manifest), "--storage", str(storage)]) == 0
    run, _ = stage_folders(manifest, storage)
    rows = _rows(run)
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"], dtype="float32").eval()
    assert {r["format"] for r in rows} == {"multiple_choice", "yes_no"}
    for row in rows:
        assert row["protocol"] == "loglikelihood" and row["prompt_format"] == "plain"
        expected_choices = row["options"] if row["format"] == "multiple_choice" else ["yes", "no"]
        assert row["choices"] == expected_choices
        direct = [_direct_logprob(model, tokenizer, row["prompt"], c) for c in row["choices"]]
        assert row["choice_logprobs"] == pytest.approx(direct, abs=1e-4)
        best = max(range(len(direct)), key=lambda i: (row["choice_logprobs"][i], -i))
        assert row["prediction"] == row["choices"][best] and row["output_tokens"] == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["overall"]["acc"] is not None and metrics["overall"]["acc_norm"] is not None
    # acc is option accuracy of the chosen option: the same decision, scored two ways.
    assert metrics["by_format"]["multiple_choice"]["acc"] == pytest.approx(metrics["by_format"]["multiple_choice"]["option_accuracy"])


def test_shared_prefix_path_gives_the_logprobs_of_the_plain_path_with_shots(loglikelihood_manifest, tmp_path, monkeypatch):
    """Batches of 4 share the instruction and the same 2 shots, computed once; one query per
    batch shares nothing. Both must give the same log-probabilities."""
    from runner.prefix_cache import PrefixCache

    prefixed = []
    tail_logits = PrefixCache.tail_logits
    monkeypatch.setattr(PrefixCache, "tail_logits", lambda self, *a: prefixed.append(tail_logits(self, *a)) or prefixed[-1])
    storage = tmp_path / "runs"
    icl = {"chat_template": "never", "shots": 2, "same_shots_for_all": True}
    shared = loglikelihood_manifest("ll-shared", icl=icl, decoding={"kind": "greedy", "batch_size": 4})
    assert main(["run", str(shared), "--storage", str(storage)]) == 0
    rows = {r["id"]: r for r in _rows(stage_folders(shared, storage)[0])}
    assert all(r["n_shots"] == 2 for r in rows.values())
    assert any(logits is not None for logits in prefixed), "the shared-prefix path never ran"
    single = loglikelihood_manifest("ll-single", icl=icl, decoding={"kind": "greedy", "batch_size": 1})
    assert main(["run", str(single), "--storage", str(storage)]) == 0
    for row in _rows(stage_folders(single, storage)[0]):
        assert row["choice_logprobs"] == pytest.approx(rows[row["id"]]["choice_logprobs"], abs=1e-4)


@pytest.mark.parametrize("method", [
    {"kind": "lora", "r": 4, "alpha": 8, "target_modules": "attention"},
    {"kind": "prompt_tuning", "num_virtual_tokens": 4},
])
def test_trained_methods_are_scored_by_loglikelihood(loglikelihood_manifest, tmp_path, method):
    manifest = loglikelihood_manifest(f"ll-{method['kind']}", method=method, train={"steps": 2, "batch_size": 4, "save_steps": 2, "heldout_examples": 0})
    storage = tmp_path / "runs"
    assert main(["run", str(manifest), "--storage", str(storage)]) == 0
    rows = _rows(stage_folders(manifest, storage)[0])
    assert rows and all(len(r["choice_logprobs"]) == len(r["choices"]) >= 2 for r in rows)
    assert all(math.isfinite(x) and x < 0 for r in rows for x in r["choice_logprobs"])


def test_loglikelihood_on_span_or_free_text_data_is_refused_at_validation(loglikelihood_manifest, small_data, capsys):
    manifest = loglikelihood_manifest("ll-extractive", data={"root": str(small_data), "datasets": ["synthetic_multiple_choice", "synthetic_extractive"]})
    assert main(["validate", str(manifest)]) == 2
    err = capsys.readouterr().err
    line = next(i for i, text in enumerate(manifest.read_text().splitlines(), 1) if "synthetic_extractive" in text)
    assert f"{manifest}:{line}" in err and "synthetic_extractive is extractive" in err and "Traceback" not in err


def test_loglikelihood_with_a_decoding_strategy_is_refused(loglikelihood_manifest, capsys):
    manifest = loglikelihood_manifest("ll-lookup", decoding={"kind": "prompt_lookup"})
    assert main(["validate", str(manifest)]) == 2
    assert "generates nothing" in capsys.readouterr().err


def test_loglikelihood_on_jsonl_rows_without_choices_stops_before_the_model_loads(tmp_path, tiny_manifest, capsys):
    from conftest import REPO

    manifest = tiny_manifest("ll-jsonl", data={"format": "jsonl", "root": str(REPO / "data" / "custom"), "datasets": ["trivia"]},
                             eval={"protocol": "loglikelihood"})
    assert main(["validate", str(manifest)]) == 2
    err = capsys.readouterr().err
    assert "trivia is" in err and "eval.protocol: generate" in err
    assert main(["run", str(manifest), "--storage", str(tmp_path / "runs")]) == 2
    assert "Traceback" not in capsys.readouterr().err and not (tmp_path / "runs").exists()

"""Assisted decoding on models a method changes underneath it: prompt tuning's virtual tokens (in the
cache but not in `input_ids`) and a 4-bit quantized base. Greedy verification must keep the answers
of plain greedy decoding with the same model, token for token, and a model drafting for itself must
have every proposal accepted (a draft that lost context would propose wrong tokens, which costs
speed but not answers, so only the acceptance count shows it)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import SYNTHETIC, stage_folders, tiny_corpus
from runner.cli import main
from tiny_models import save_tiny_model

COMMON = {"max_new_tokens": 8, "stop": ["\n"]}
DATA_PER_DATASET = 3
TRAIN = {"steps": 2, "batch_size": 4, "learning_rate": 1e-2, "save_steps": 2, "logging_steps": 1}


@pytest.fixture(scope="module")
def draft(tmp_path_factory, small_data) -> Path:
    """A tiny Llama with the targets' tokenizer and other random weights: it proposes mostly wrong tokens."""
    return save_tiny_model(tmp_path_factory.mktemp("draft") / "llama", "llama", tiny_corpus(small_data), seed=7)


def _rows(manifest: Path, storage: Path) -> dict[str, dict]:
    evaluation, _ = stage_folders(manifest, storage)
    shards = sorted((evaluation / "predictions").glob("*.parquet"))
    return {row["id"]: row for shard in shards for row in pq.read_table(shard).to_pylist()}


def _answers(rows: dict[str, dict]) -> dict[str, tuple[str, int]]:
    return {key: (row["raw_output"], row["output_tokens"]) for key, row in rows.items()}


def _run_strategies(tiny_manifest, small_data: Path, tmp_path: Path, method: dict, draft: Path) -> dict[str, dict[str, dict]]:
    """Every strategy's prediction rows, for one trained model (trained once: the decoding is not
    part of the training's identity). `self-draft` drafts with a twin manifest of the same training."""
    data = {"root": str(small_data), "datasets": SYNTHETIC, "max_eval_examples": DATA_PER_DATASET}
    twin = tiny_manifest("twin", method=method, train=TRAIN, data=data, decoding={"kind": "greedy", "batch_size": 1, **COMMON})
    strategies = {
        "greedy": {"kind": "greedy", "batch_size": 1, **COMMON},
        "prompt_lookup": {"kind": "prompt_lookup", "num_tokens": 4, "max_ngram": 2, **COMMON},
        "speculative": {"kind": "speculative", "draft": {"path": str(draft)}, "num_draft_tokens": 3, **COMMON},
        "self-draft": {"kind": "speculative", "draft": {"manifest": twin.name}, "num_draft_tokens": 3, "schedule": "constant", **COMMON},
    }
    rows = {}
    for name, decoding in strategies.items():
        manifest = tiny_manifest(name, method=method, train=TRAIN, data=data, decoding=decoding)
        assert main(["run", str(manifest), "--storage", str(tmp_path / "runs")]) == 0
        rows[name] = _rows(manifest, tmp_path / "runs")
    return rows


def _assert_assisted_equal_greedy(rows: dict[str, dict[str, dict]]) -> None:
    greedy = _answers(rows["greedy"])
    assert len(greedy) == DATA_PER_DATASET * len(SYNTHETIC)
    for name in ("prompt_lookup", "speculative", "self-draft"):
        assert _answers(rows[name]) == greedy, name
    assert sum(r["draft_accepted_tokens"] for r in rows["prompt_lookup"].values()) > 0, "some copied tokens were verified and kept"
    for row in rows["self-draft"].values():
        assert row["draft_accepted_tokens"] == row["draft_proposed_tokens"], f"{row['id']}: the twin draft must always be right"
    assert sum(r["draft_accepted_tokens"] for r in rows["self-draft"].values()) > 0


def test_prompt_tuned_model_answers_with_prompt_lookup_and_speculative_drafts_exactly_as_with_greedy(tiny_manifest, small_data, tmp_path, draft):
    # Random virtual tokens steer the tiny model away from its base answers from the first step.
    rows = _run_strategies(tiny_manifest, small_data, tmp_path, {"kind": "prompt_tuning", "num_virtual_tokens": 6, "init": "random"}, draft)
    _assert_assisted_equal_greedy(rows)


def test_4bit_qlora_model_answers_with_prompt_lookup_and_speculative_drafts_exactly_as_with_greedy(tiny_manifest, small_data, tmp_path, draft):
    # compute_dtype auto: float32 on CPU. The self-draft is the same 4-bit model with its adapter,
    # the seed study's setup (a QLoRA model drafting for a QLoRA model).
    method = {"kind": "qlora", "bits": 4, "r": 4, "alpha": 8, "target_modules": "attention"}
    rows = _run_strategies(tiny_manifest, small_data, tmp_path, method, draft)
    _assert_assisted_equal_greedy(rows)
    evaluation, _ = stage_folders(tmp_path / "manifests" / "speculative.yaml", tmp_path / "runs")
    assert json.loads((evaluation / "metrics.json").read_text())["method"]["base_quantized"] == "4-bit nf4 double-quant"


def test_prompt_tuned_draft_keeps_its_virtual_tokens_when_the_prompt_is_shorter_than_them(tiny_models, small_data):
    """transformers crops a draft's cache to `len(input_ids) - 2` entries between rounds; with 20
    virtual tokens and a 2-8 token prompt that cuts into the virtual tokens themselves."""
    import torch
    from transformers import AutoModelForCausalLM

    from runner.data import load_split
    from runner.decoding.greedy import GreedySpec
    from runner.decoding.speculative import SpeculativeSpec, configure_draft
    from runner.generate import Query, generate_batch
    from runner.icl import PromptFormat
    from runner.manifest import IclSpec
    from runner.methods import METHODS, MethodContext
    from runner.models import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_models["llama"]))
    method = METHODS.get("prompt_tuning")
    spec = method.spec(num_virtual_tokens=20, init="random")

    def prompt_tuned():
        model = AutoModelForCausalLM.from_pretrained(str(tiny_models["llama"]), dtype=torch.float32)
        return method.apply(model, spec, MethodContext(1, model.config.model_type, tokenizer, "cpu")).eval()

    target, twin = prompt_tuned(), prompt_tuned()
    with torch.no_grad():  # the twin drafts with the target's own virtual tokens
        twin.prompt_encoder["default"].embedding.weight.copy_(target.prompt_encoder["default"].embedding.weight)
    assisted = SpeculativeSpec(draft={"path": str(tiny_models["llama"])}, num_draft_tokens=3, schedule="constant", max_new_tokens=16, stop=())
    configure_draft(twin, assisted)
    example = load_split(small_data, ["synthetic_yes_no"], "dev", 1)[0]
    prompt = PromptFormat(tokenizer, IclSpec()).prompt(example, ())
    for text in ("yes", "Is it", "a b c d e f"):
        query = Query(example, prompt, tokenizer(text)["input_ids"])
        [plain] = generate_batch(target, tokenizer, [query], GreedySpec(batch_size=1, max_new_tokens=16, stop=()), "cpu")
        [drafted] = generate_batch(target, tokenizer, [query], assisted, "cpu", {"assistant_model": twin})
        assert len(query.input_ids) + 2 < spec.num_virtual_tokens
        assert drafted["raw_output"] == plain["raw_output"]
        assert drafted["draft_accepted_tokens"] == drafted["draft_proposed_tokens"] > 0, text


def test_a_saved_prompt_tuning_adapter_as_a_draft_is_refused_with_the_manifest_route_named(tiny_manifest, tiny_models, tmp_path, capsys):
    from peft import PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    adapter = tmp_path / "prompt-adapter"
    base = AutoModelForCausalLM.from_pretrained(str(tiny_models["llama"]))
    get_peft_model(base, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)).save_pretrained(str(adapter))
    decoding = {"kind": "speculative", "draft": {"path": str(tiny_models["llama"]), "adapter": str(adapter)}, "num_draft_tokens": 3, **COMMON}
    manifest = tiny_manifest("prompt-draft", decoding=decoding)
    assert main(["run", str(manifest), "--storage", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "prompt-learning adapter cannot be merged" in err and "decoding.draft.manifest" in err
    assert "Traceback" not in err
    evaluation, _ = stage_folders(manifest, tmp_path / "runs")
    assert not (evaluation / "_SUCCESS").exists()

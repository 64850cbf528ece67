"""Speed-up strategies must not change greedy answers, and impossible settings are rejected."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import stage_folders, tiny_corpus
from runner.cli import main
from runner.manifest import load_manifest
from tiny_models import save_tiny_model

FAMILIES = ["llama", "gemma", "mistral"]


def _answers(manifest: Path, storage: Path) -> dict[str, tuple[str, int]]:
    evaluation, _ = stage_folders(manifest, storage)
    rows = [r for shard in sorted((evaluation / "predictions").glob("*.parquet")) for r in pq.read_table(shard).to_pylist()]
    return {r["id"]: (r["raw_output"], r["output_tokens"]) for r in rows}


@pytest.fixture(scope="module")
def drafts(tmp_path_factory, small_data):
    """Tiny draft models: same tokenizer as the targets (same corpus), other random weights."""
    root = tmp_path_factory.mktemp("drafts")
    return {family: save_tiny_model(root / family, family, tiny_corpus(small_data), seed=7) for family in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_lookup_and_speculative_greedy_equal_plain_greedy(family, tiny_manifest, drafts, tmp_path):
    common = {"max_new_tokens": 8, "stop": ["\n"]}
    strategies = {
        "greedy": {"kind": "greedy", "batch_size": 1, **common},
        "prompt_lookup": {"kind": "prompt_lookup", "num_tokens": 4, "max_ngram": 2, **common},
        "speculative": {"kind": "speculative", "draft": {"path": str(drafts[family])}, "num_draft_tokens": 3, **common},
    }
    answers = {}
    for name, decoding in strategies.items():
        manifest = tiny_manifest(f"{family}-{name}", family=family, decoding=decoding)
        assert main(["run", str(manifest), "--storage", str(tmp_path)]) == 0
        answers[name] = _answers(manifest, tmp_path)
    assert len(answers["greedy"]) == 24
    assert answers["prompt_lookup"] == answers["greedy"]
    assert answers["speculative"] == answers["greedy"]


def test_cross_tokenizer_draft_needs_the_switch_and_then_keeps_greedy_answers(tiny_manifest, tmp_path, capsys):
    other = save_tiny_model(tmp_path / "other-vocab", "llama", ["a different corpus gives a different vocabulary"] * 50, seed=3)
    common = {"max_new_tokens": 6, "stop": ["\n"]}  # stop strings must survive assisted generation
    refused = tiny_manifest("cross-refused", decoding={"kind": "speculative", "draft": {"path": str(other)}, **common})
    capsys.readouterr()
    assert main(["run", str(refused), "--storage", str(tmp_path)]) == 2
    assert "decoding.cross_tokenizer: true" in capsys.readouterr().err

    greedy = tiny_manifest("cross-greedy", decoding={"kind": "greedy", "batch_size": 1, **common})
    crossed = tiny_manifest("cross-ok", decoding={"kind": "speculative", "draft": {"path": str(other)}, "cross_tokenizer": True, **common})
    for manifest in (greedy, crossed):
        assert main(["run", str(manifest), "--storage", str(tmp_path)]) == 0
    assert {k: v[0] for k, v in _answers(crossed, tmp_path).items()} == {k: v[0] for k, v in _answers(greedy, tmp_path).items()}


@pytest.mark.parametrize(
    ("decoding", "field", "message"),
    [
        ({"kind": "speculative", "draft": {"package": "smollm2-135m"}, "batch_size": 4}, "decoding.batch_size", "one prompt at a time"),
        ({"kind": "prompt_lookup", "batch_size": 2}, "decoding.batch_size", "one prompt at a time"),
        ({"kind": "greedy", "stop": ["\n", ""]}, "decoding.stop", "empty stop string"),
        ({"kind": "greedy", "max_new_tokens": 0}, "decoding.max_new_tokens", "greater than or equal to 1"),
        ({"kind": "speculative"}, "decoding.draft", "Field required"),
        ({"kind": "prompt_lookup", "cache": "static"}, "decoding.cache", "dynamic cache"),
    ],
    ids=["speculative-batch", "prompt-lookup-batch", "empty-stop", "zero-new-tokens", "no-draft", "prompt-lookup-static-cache"],
)
def test_impossible_decoding_settings_are_rejected_at_validation(decoding, field, message, tiny_manifest, capsys):
    manifest = tiny_manifest("bad-decoding", decoding=decoding)
    capsys.readouterr()
    assert main(["validate", str(manifest)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert any(f": {field}: " in line and message in line for line in lines), lines


def test_speculative_generation_really_consults_the_draft(tiny_models, drafts, small_data):
    from transformers import AutoModelForCausalLM

    from runner.data import load_split
    from runner.decoding.speculative import SpeculativeSpec
    from runner.generate import Query, generate_batch
    from runner.icl import PromptFormat
    from runner.manifest import IclSpec
    from runner.models import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_models["llama"]))
    target = AutoModelForCausalLM.from_pretrained(str(tiny_models["llama"]), dtype="float32").eval()
    draft = AutoModelForCausalLM.from_pretrained(str(drafts["llama"]), dtype="float32").eval()
    calls = []
    draft.register_forward_hook(lambda module, args, output: calls.append(1))
    fmt = PromptFormat(tokenizer, IclSpec())
    example = load_split(small_data, ["synthetic_extractive"], "dev", 1)[0]
    spec = SpeculativeSpec(draft={"path": str(drafts["llama"])}, max_new_tokens=8, stop=())
    [row] = generate_batch(target, tokenizer, [Query.unfitted(fmt, example)], spec, "cpu", {"assistant_model": draft})
    assert calls, "the draft model ran"
    assert 0 <= row["draft_accepted_tokens"] <= row["draft_proposed_tokens"]
    assert row["draft_proposed_tokens"] > 0


def _one_query(tiny_models, small_data, dataset="synthetic_extractive"):
    from runner.data import load_split
    from runner.generate import Query
    from runner.icl import PromptFormat
    from runner.manifest import IclSpec
    from runner.models import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_models["llama"]))
    fmt = PromptFormat(tokenizer, IclSpec())
    example = load_split(small_data, [dataset], "dev", 1)[0]
    return tokenizer, Query.unfitted(fmt, example)


def test_a_model_drafting_for_itself_has_every_draft_token_accepted_and_saves_target_forwards(tiny_models, small_data):
    from transformers import AutoModelForCausalLM

    from runner.decoding.greedy import GreedySpec
    from runner.decoding.speculative import SpeculativeSpec
    from runner.generate import generate_batch

    tokenizer, query = _one_query(tiny_models, small_data)
    target = AutoModelForCausalLM.from_pretrained(str(tiny_models["llama"]), dtype="float32").eval()
    common = {"max_new_tokens": 12, "stop": ()}
    spec = SpeculativeSpec(draft={"path": str(tiny_models["llama"])}, num_draft_tokens=4, schedule="constant", **common)
    # A second copy: forwards of the target object itself are what gets counted.
    twin = AutoModelForCausalLM.from_pretrained(str(tiny_models["llama"]), dtype="float32").eval()
    [assisted] = generate_batch(target, tokenizer, [query], spec, "cpu", {"assistant_model": twin})
    [plain] = generate_batch(target, tokenizer, [query], GreedySpec(batch_size=1, **common), "cpu")
    assert assisted["raw_output"] == plain["raw_output"]
    # Plain greedy: the prefill yields the first token, each later token one more forward pass.
    assert plain["batch_target_forwards"] == plain["output_tokens"]
    assert plain["draft_proposed_tokens"] is None and plain["draft_accepted_tokens"] is None
    assert assisted["draft_accepted_tokens"] == assisted["draft_proposed_tokens"] > 0
    # Each verification pass keeps the accepted proposals plus one token of its own.
    assert assisted["output_tokens"] == assisted["draft_accepted_tokens"] + assisted["batch_target_forwards"]
    assert assisted["batch_target_forwards"] < plain["batch_target_forwards"]


def test_a_prompts_draft_length_does_not_depend_on_the_prompts_before_it(tiny_models, small_data):
    from transformers import AutoModelForCausalLM

    from runner.decoding.speculative import SpeculativeSpec, configure_draft
    from runner.generate import generate_batch

    tokenizer, query = _one_query(tiny_models, small_data)
    target = AutoModelForCausalLM.from_pretrained(str(tiny_models["llama"]), dtype="float32").eval()
    twin = AutoModelForCausalLM.from_pretrained(str(tiny_models["llama"]), dtype="float32").eval()
    spec = SpeculativeSpec(draft={"path": str(tiny_models["llama"])}, num_draft_tokens=2, max_new_tokens=12, stop=())
    configure_draft(twin, spec)
    runs = [generate_batch(target, tokenizer, [query], spec, "cpu", {"assistant_model": twin})[0] for _ in range(3)]
    assert runs[0]["draft_accepted_tokens"] == runs[0]["draft_proposed_tokens"] > 0, "a self draft is always right"
    # transformers' own `heuristic` would carry a longer length into the next call; each call
    # here starts again from num_draft_tokens, so the same prompt drafts the same way.
    assert twin.generation_config.num_assistant_tokens == spec.num_draft_tokens
    assert len({(r["draft_proposed_tokens"], r["batch_target_forwards"]) for r in runs}) == 1


def test_every_registered_decoding_strategy_has_a_valid_example_manifest(capsys):
    from conftest import REPO
    from runner.decoding import DECODINGS

    folder = REPO / "manifests" / "examples" / "decoding"
    for kind in DECODINGS.discover():
        example = folder / f"{kind}.yaml"
        assert example.is_file(), f"add {example}"
        assert load_manifest(example).manifest.decoding.kind == kind


def test_per_format_budgets_cap_answers_and_never_share_a_batch(tiny_manifest, tmp_path):
    decoding = {"kind": "greedy", "max_new_tokens": 6, "batch_size": 8, "stop": [], "max_new_tokens_by_format": {"yes_no": 2}}
    manifest = tiny_manifest("per-format", decoding=decoding)
    assert main(["run", str(manifest), "--storage", str(tmp_path)]) == 0
    evaluation, _ = stage_folders(manifest, tmp_path)
    rows = [r for shard in sorted((evaluation / "predictions").glob("*.parquet")) for r in pq.read_table(shard).to_pylist()]
    assert all(r["output_tokens"] <= 2 for r in rows if r["format"] == "yes_no")
    assert any(r["output_tokens"] > 2 for r in rows if r["format"] != "yes_no")
    budgets: dict[str, set[bool]] = {}
    for r in rows:
        budgets.setdefault(r["batch"], set()).add(r["format"] == "yes_no")
    assert all(len(kinds) == 1 for kinds in budgets.values())


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"icl": {"shots": 500}, "method": {"kind": "none"}}, "icl.shots"),
        ({"decoding": {"kind": "greedy", "max_new_tokens": 600}}, "decoding.max_new_tokens"),
    ],
    ids=["more-shots-than-train-examples", "answer-budget-beyond-context"],
)
def test_settings_the_data_or_model_cannot_satisfy_exit_2_naming_the_field(overrides, field, tiny_manifest, tmp_path, capsys):
    manifest = tiny_manifest("unsatisfiable", **overrides)
    capsys.readouterr()
    assert main(["run", str(manifest), "--storage", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert field in err and "Traceback" not in err


def test_every_icl_strategy_has_a_valid_example_manifest():
    from typing import get_args

    from conftest import REPO
    from runner.manifest import IclSpec

    for strategy in get_args(IclSpec.model_fields["strategy"].annotation):
        example = REPO / "manifests" / "examples" / "icl" / f"{strategy}.yaml"
        assert example.is_file(), f"add {example}"
        assert load_manifest(example).manifest.icl.strategy == strategy

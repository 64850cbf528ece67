"""Computing the prompts' shared prefix once must not change a single greedy token."""

from __future__ import annotations

import pytest

from conftest import SYNTHETIC
from runner.data import load_split
from runner.decoding.greedy import GreedySpec
from runner.decoding.sample import SampleSpec
from runner.generate import Query, generate_batch, length_batches
from runner.icl import PromptFormat, select_shots, shot_rng
from runner.manifest import IclSpec
from runner.models import load_tokenizer
from runner.prefix_cache import PrefixCache, shared_prefix_length


def _gemma3(tokenizer, sliding_window: int):
    """A tiny Gemma 3 (the demo model's architecture): one sliding-window layer, one global."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=1024, sliding_window=sliding_window,
        layer_types=["sliding_attention", "full_attention"], initializer_range=0.1, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    return Gemma3ForCausalLM(config).eval()


@pytest.fixture(scope="module")
def models(tiny_models):
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(str(tiny_models["llama"]))
    loaded = {family: AutoModelForCausalLM.from_pretrained(str(path), dtype="float32").eval() for family, path in tiny_models.items()}
    loaded["gemma3"] = _gemma3(tokenizer, sliding_window=512)
    return tokenizer, loaded


def _queries(tokenizer, small_data, shots: int) -> list[Query]:
    """Mixed-format queries; with shots, one set shared by all (a long common prefix)."""
    fmt = PromptFormat(tokenizer, IclSpec())
    pool = load_split(small_data, SYNTHETIC, "train", 20)
    examples = load_split(small_data, SYNTHETIC, "dev", 4)
    return [Query.unfitted(fmt, e, select_shots(e, pool, shots, shot_rng(3, e, same_for_all=True))) for e in examples]


def _rows(model, tokenizer, queries, spec, batch_size, prefix_cache=None) -> dict[str, tuple[str, int]]:
    batches = length_batches(queries, batch_size)
    rows = [r for b in batches for r in generate_batch(model, tokenizer, b, spec, "cpu", None, prefix_cache)]
    return {r["id"]: (r["raw_output"], r["output_tokens"]) for r in rows}


@pytest.mark.parametrize("family", ["llama", "gemma", "mistral", "gemma3"])
@pytest.mark.parametrize("shots", [0, 2])
def test_shared_prefix_greedy_answers_equal_one_at_a_time_plain_generation(family, shots, models, small_data):
    tokenizer, loaded = models
    model = loaded[family]
    queries = _queries(tokenizer, small_data, shots)
    spec = GreedySpec(max_new_tokens=8, stop=())
    plain = _rows(model, tokenizer, queries, spec, batch_size=1)
    for batch_size in (1, 5, 16):
        cache = PrefixCache(model, "cpu")
        assert _rows(model, tokenizer, queries, spec, batch_size, cache) == plain, f"batch size {batch_size}"
        window = getattr(model.config, "sliding_window", None)
        if window is None or max(len(q.input_ids) for q in queries) + 8 <= window:
            assert cache.computed_tokens > 0, "the prefix path really ran"
    assert len({len(q.input_ids) for q in queries}) > 1, "suffixes of different lengths: padding between prefix and suffix"


def test_sampled_answers_are_the_same_with_a_shared_prefix(models, small_data):
    tokenizer, loaded = models
    queries = _queries(tokenizer, small_data, 2)
    spec = SampleSpec(max_new_tokens=8, stop=(), temperature=1.0, seed=5)
    plain = _rows(loaded["llama"], tokenizer, queries, spec, batch_size=1)
    assert _rows(loaded["llama"], tokenizer, queries, spec, 5, PrefixCache(loaded["llama"], "cpu")) == plain


def test_a_run_computes_the_common_prefix_once_and_reuses_it_across_batches(models, small_data):
    tokenizer, loaded = models
    queries = _queries(tokenizer, small_data, 2)
    common = shared_prefix_length([q.input_ids for q in queries])
    batches = length_batches(queries, 4)
    per_batch = sum(shared_prefix_length([q.input_ids for q in b]) for b in batches)
    cache = PrefixCache(loaded["llama"], "cpu")
    _rows(loaded["llama"], tokenizer, queries, GreedySpec(max_new_tokens=4, stop=()), 4, cache)
    assert common > 30, "two shared shots make a long common prefix"
    # Each batch pays only for the tokens its prefix does not share with the previous batch's:
    # the run's common prefix goes through the model once, not once per batch.
    assert len(batches) >= 3
    assert cache.computed_tokens <= per_batch - (len(batches) - 1) * common


def test_prompts_that_could_outgrow_a_sliding_window_are_generated_without_the_shared_prefix(models, small_data):
    tokenizer, _ = models
    model = _gemma3(tokenizer, sliding_window=24)
    queries = _queries(tokenizer, small_data, 2)
    spec = GreedySpec(max_new_tokens=8, stop=())
    cache = PrefixCache(model, "cpu")
    assert min(len(q.input_ids) for q in queries) > 24
    assert _rows(model, tokenizer, queries, spec, 5, cache) == _rows(model, tokenizer, queries, spec, 1)
    assert cache.computed_tokens == 0


def test_a_static_cache_run_ignores_the_prefix_cache(models, small_data):
    tokenizer, loaded = models
    queries = _queries(tokenizer, small_data, 0)
    cache = PrefixCache(loaded["llama"], "cpu")
    static = _rows(loaded["llama"], tokenizer, queries, GreedySpec(max_new_tokens=8, stop=(), cache="static"), 5, cache)
    assert static == _rows(loaded["llama"], tokenizer, queries, GreedySpec(max_new_tokens=8, stop=()), 1)
    assert cache.computed_tokens == 0


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_rows_that_finish_early_leave_the_batch_without_changing_any_answer(family, models, small_data, monkeypatch):
    import runner.generate
    from runner.generate import RETIRE_EVERY

    kept = []
    keep_rows = runner.generate._keep_cache_rows
    monkeypatch.setattr(runner.generate, "_keep_cache_rows", lambda cache, rows: (kept.append(len(rows)), keep_rows(cache, rows)))

    tokenizer, loaded = models
    model = loaded[family]
    queries = _queries(tokenizer, small_data, 2)
    # Stop strings of single common letters end answers at scattered steps.
    greedy = GreedySpec(max_new_tokens=16, stop=("e", "o"))
    sample = SampleSpec(max_new_tokens=16, stop=("e", "o"), temperature=1.0, seed=9)
    for spec in (greedy, sample):
        plain = _rows(model, tokenizer, queries, spec, batch_size=1)
        lengths = sorted(tokens for _, tokens in plain.values())
        assert lengths[0] + RETIRE_EVERY <= lengths[-1], "some rows finish spans before others"
        kept.clear()
        assert _rows(model, tokenizer, queries, spec, 16, PrefixCache(model, "cpu")) == plain
        assert kept and kept == sorted(kept, reverse=True), "finished rows really left, the batch only shrank"

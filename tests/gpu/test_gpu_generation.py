"""The inference path on a GPU in bfloat16: shared prefix, retiring rows, static cache, assisted
decoding, merged adapters, reference perplexity and out-of-memory back-off (see conftest.py).

The references are the CPU suite's: one prompt at a time with plain `generate` (tests/test_prefix_cache.py,
tests/test_decoding.py), a float32 recomputation (tests/test_prompts_and_generation.py).
"""

from __future__ import annotations

import copy
import time

import pytest

from conftest import SYNTHETIC
from gpu.tier import agreement, answers
from runner.data import load_split
from runner.decoding.greedy import GreedySpec
from runner.generate import Query, generate_batch, length_batches
from runner.icl import PromptFormat, select_shots, shot_rng
from runner.manifest import IclSpec
from runner.prefix_cache import PrefixCache

pytestmark = pytest.mark.gpu

# Stated lower bounds of the prefix agreement (tier.Agreement) with one-at-a-time plain greedy
# generation, in bf16: first estimates, to be replaced by what the first GPU run measures minus a
# margin (docs/gpu-checks.md). The dry run requires 1.0.
PREFIX_FLOOR = 0.75
"""Shared prefix, retiring rows, static cache, merged adapter: the same arithmetic in other splits."""
ASSISTED_FLOOR = 0.6
"""Assisted decoding verifies several tokens in one forward pass: a differently shaped matmul per step."""
BATCHING_SLACK = 0.1
"""How much further than plain batching (same batch, no shared prefix) the shared prefix may drift."""


def _queries(tokenizer, small_data, shots: int, per_dataset: int = 6, split: str = "dev") -> list[Query]:
    """Mixed-format queries (at most 6 a dataset from dev, 40 from train); with shots, one set
    shared by all (a long common prefix), never the query itself."""
    fmt = PromptFormat(tokenizer, IclSpec())
    pool = load_split(small_data, SYNTHETIC, "train", 20)
    examples = load_split(small_data, SYNTHETIC, split, per_dataset)
    return [Query.unfitted(fmt, e, select_shots(e, pool, shots, shot_rng(3, e, same_for_all=True))) for e in examples]


def _generate(model, tokenizer, queries, spec, batch_size: int, tier, prefix_cache=None, extra=None) -> dict[str, str]:
    rows = [r for b in length_batches(queries, batch_size)
            for r in generate_batch(model, tokenizer, b, spec, tier.device, extra, prefix_cache)]
    return answers(rows)


def _tiny(family: str, tiny_models, tokenizer, tier):
    from transformers import AutoModelForCausalLM

    if family == "gemma3":
        import torch

        from test_prefix_cache import _gemma3

        # _gemma3 seeds torch's global generators; fork_rng puts them back afterwards.
        with torch.random.fork_rng(devices=[torch.cuda.current_device()] if tier.device == "cuda" else []):
            return _gemma3(tokenizer, sliding_window=512).to(tier.device, tier.dtype)
    return AutoModelForCausalLM.from_pretrained(str(tiny_models[family]), dtype=tier.dtype).to(tier.device).eval()


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma3", "wide-llama"])
def test_shared_prefix_greedy_agrees_with_one_at_a_time_generation(name, tiny_models, tokenizer, wide, small_data, tier, measure):
    model = wide if name == "wide-llama" else _tiny(name.split("-")[1], tiny_models, tokenizer, tier)
    queries = _queries(tokenizer, small_data, shots=3, per_dataset=tier.examples(6))
    spec = GreedySpec(max_new_tokens=16, stop=())
    one_at_a_time = _generate(model, tokenizer, queries, spec, 1, tier)
    batched = _generate(model, tokenizer, queries, spec, 16, tier)
    cache = PrefixCache(model, tier.device)
    prefixed = _generate(model, tokenizer, queries, spec, 16, tier, cache)
    with_prefix, plain_batching = agreement(prefixed, one_at_a_time), agreement(batched, one_at_a_time)
    measure("prefix_vs_one_at_a_time", with_prefix.as_dict())
    measure("plain_batch_vs_one_at_a_time", plain_batching.as_dict())
    measure("prefix_vs_plain_batch", agreement(prefixed, batched).as_dict())
    assert cache.computed_tokens > 0, "the shared-prefix path really ran"
    assert with_prefix.prefix >= tier.floor(PREFIX_FLOOR)
    assert with_prefix.prefix >= plain_batching.prefix - tier.slack(BATCHING_SLACK)


def test_rows_that_finish_early_leave_the_batch_and_answers_agree(wide, tokenizer, small_data, tier, measure, monkeypatch):
    import runner.generate

    kept = []
    keep_rows = runner.generate._keep_cache_rows
    monkeypatch.setattr(runner.generate, "_keep_cache_rows", lambda cache, rows: (kept.append(len(rows)), keep_rows(cache, rows)))
    queries = _queries(tokenizer, small_data, shots=3, per_dataset=tier.examples(6))
    # Stop strings of single common letters end answers at scattered steps.
    spec = GreedySpec(max_new_tokens=24, stop=("e", "o"))
    retiring = _generate(wide, tokenizer, queries, spec, len(queries), tier, PrefixCache(wide, tier.device))
    assert kept and kept == sorted(kept, reverse=True), "finished rows really left, the batch only shrank"
    measure("batch_sizes_after_retiring", kept)
    # One span as long as the answer: no row leaves before the batch ends.
    monkeypatch.setattr(runner.generate, "RETIRE_EVERY", spec.max_new_tokens)
    whole = _generate(wide, tokenizer, queries, spec, len(queries), tier, PrefixCache(wide, tier.device))
    one_at_a_time = _generate(wide, tokenizer, queries, spec, 1, tier)
    retired = agreement(retiring, one_at_a_time)
    measure("retiring_vs_whole_batch", agreement(retiring, whole).as_dict())
    measure("retiring_vs_one_at_a_time", retired.as_dict())
    measure("whole_batch_vs_one_at_a_time", agreement(whole, one_at_a_time).as_dict())
    assert agreement(retiring, whole).prefix >= tier.floor(PREFIX_FLOOR)
    assert retired.prefix >= tier.floor(PREFIX_FLOOR)


def test_static_cache_with_compilation_agrees_with_the_dynamic_cache(wide, tokenizer, small_data, tier, measure):
    import torch._dynamo.utils

    queries = _queries(tokenizer, small_data, shots=2, per_dataset=2)  # 8 queries: one batch, one compiled shape
    dynamic = _generate(wide, tokenizer, queries, GreedySpec(max_new_tokens=16, stop=()), 8, tier)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    static_spec = GreedySpec(max_new_tokens=16, stop=(), cache="static")
    started = time.perf_counter()
    static = _generate(wide, tokenizer, queries, static_spec, 8, tier)
    first = time.perf_counter() - started
    started = time.perf_counter()
    again = _generate(wide, tokenizer, queries, static_spec, 8, tier)
    compiled_graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs
    measure("first_call_seconds_with_compile", round(first, 2))
    measure("second_call_seconds", round(time.perf_counter() - started, 2))
    measure("compiled_graphs", compiled_graphs)
    measure("static_vs_dynamic", agreement(static, dynamic).as_dict())
    assert again == static, "a compiled static-cache run repeats itself"
    if not tier.dry_run:  # transformers compiles only on GPUs
        assert compiled_graphs > 0, "the forward pass was compiled"
    assert agreement(static, dynamic).prefix >= tier.floor(PREFIX_FLOOR)


def test_prompt_lookup_and_speculative_greedy_agree_with_plain_greedy(wide, tokenizer, small_data, tier, measure):
    import torch

    from runner.decoding.prompt_lookup import PromptLookupSpec
    from runner.decoding.speculative import SpeculativeSpec, configure_draft

    queries = _queries(tokenizer, small_data, shots=1, per_dataset=tier.examples(3))
    common = {"max_new_tokens": 16, "stop": ()}
    plain = _generate(wide, tokenizer, queries, GreedySpec(**common), 1, tier)
    lookup = _generate(wide, tokenizer, queries, PromptLookupSpec(num_tokens=4, max_ngram=2, **common), 1, tier)
    # The target with a noisy output head: it proposes the target's tokens often but not always,
    # so verification both accepts and rejects.
    draft = copy.deepcopy(wide)
    generator = torch.Generator(tier.device).manual_seed(7)
    with torch.no_grad():
        head = draft.lm_head.weight
        head.add_(torch.randn(head.shape, generator=generator, device=tier.device, dtype=head.dtype) * (0.3 * head.float().std()).to(head.dtype))
    spec = SpeculativeSpec(draft={"path": "in-memory"}, num_draft_tokens=4, schedule="constant", **common)
    configure_draft(draft, spec)
    rows = [r for b in length_batches(queries, 1) for r in generate_batch(wide, tokenizer, b, spec, tier.device, {"assistant_model": draft})]
    proposed, accepted = sum(r["draft_proposed_tokens"] for r in rows), sum(r["draft_accepted_tokens"] for r in rows)
    measure("prompt_lookup_vs_plain", agreement(lookup, plain).as_dict())
    measure("speculative_vs_plain", agreement(answers(rows), plain).as_dict())
    measure("speculative_acceptance", round(accepted / proposed, 4) if proposed else None)
    assert 0 < accepted < proposed, "the draft really proposed, and verification accepted some proposals and rejected others"
    assert agreement(lookup, plain).prefix >= tier.floor(ASSISTED_FLOOR)
    assert agreement(answers(rows), plain).prefix >= tier.floor(ASSISTED_FLOOR)


def test_merged_lora_answers_like_the_unmerged_adapter(wide, tokenizer, small_data, tier, measure):
    import torch

    from runner.methods import METHODS, MethodContext
    from runner.methods.lora import LoraSpec

    base = copy.deepcopy(wide)
    method, spec = METHODS.get("lora"), LoraSpec(r=16, alpha=32, dropout=0.0, target_modules="all-linear")
    model = method.apply(base, spec, MethodContext(total_steps=1, model_type="llama", tokenizer=tokenizer, device=tier.device)).eval()
    # peft starts B at zero (no change); a trained adapter's B is not. Draw one from a local generator.
    generator = torch.Generator(tier.device).manual_seed(11)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.02, generator=generator)
    queries = _queries(tokenizer, small_data, shots=2, per_dataset=tier.examples(3))
    probe = torch.tensor([queries[0].input_ids], device=tier.device)
    spec_greedy = GreedySpec(max_new_tokens=16, stop=())
    with torch.inference_mode():
        unmerged_logits = model(input_ids=probe).logits.float()
        base_logits = wide(input_ids=probe).logits.float()
    unmerged = _generate(model, tokenizer, queries, spec_greedy, 1, tier)
    merged_model = model.merge_and_unload()  # what runner/evaluation.py does for mergeable methods
    assert "Peft" not in type(merged_model).__name__
    with torch.inference_mode():
        merged_logits = merged_model(input_ids=probe).logits.float()
    merged = _generate(merged_model, tokenizer, queries, spec_greedy, 1, tier)
    scale = unmerged_logits.std().item()
    difference = (merged_logits - unmerged_logits).abs().max().item() / scale
    adapter_effect = (unmerged_logits - base_logits).abs().max().item() / scale
    measure("max_logit_difference_over_logit_std", round(difference, 5))
    measure("adapter_effect_over_logit_std", round(adapter_effect, 5))
    measure("merged_vs_unmerged", agreement(merged, unmerged).as_dict())
    assert adapter_effect > 0.1, "the adapter changes the outputs, so merging it is tested"
    # bf16: the merged weight W + sBA is rounded once (2^-8 relative), the unmerged path rounds Wx
    # and BAx apart; a twentieth of the logits' spread bounds that. float32: the CPU suite's 1e-4.
    assert difference <= (1e-4 if tier.dry_run else 0.05)
    assert agreement(merged, unmerged).prefix >= tier.floor(PREFIX_FLOOR)


def test_reference_perplexity_in_bf16_matches_a_float32_recomputation(wide, tokenizer, small_data, tier, measure):
    import torch

    from runner.perplexity import reference_nll

    fmt = PromptFormat(tokenizer, IclSpec())
    queries = _queries(tokenizer, small_data, shots=2, per_dataset=tier.examples(6))
    batched = reference_nll(wide, fmt, queries, tier.device, 2048)
    exact = copy.deepcopy(wide).float()
    errors = []
    for query, (nll, tokens) in zip(queries, batched):
        answer = tokenizer(fmt.completion(query.prompt, query.example.answers[0]), add_special_tokens=False)["input_ids"]
        ids = torch.tensor([query.input_ids + answer], device=tier.device)
        with torch.inference_mode():
            log_probs = torch.log_softmax(exact(input_ids=ids).logits[0, :-1].double(), dim=-1)
        expected = -sum(log_probs[len(query.input_ids) - 1 + i, token].item() for i, token in enumerate(answer))
        assert tokens == len(answer)
        errors.append(abs(nll - expected) / max(1.0, expected))
    measure("max_relative_nll_error", round(max(errors), 6))
    measure("mean_relative_nll_error", round(sum(errors) / len(errors), 6))
    # bf16 logits carry 8 significant bits: about 0.4% per logit, plus what 6 layers add; 5% per answer.
    assert max(errors) <= (1e-3 if tier.dry_run else 0.05)  # float32: the CPU suite's bound


def test_generation_backs_off_when_a_batch_does_not_fit(wide, tokenizer, small_data, tier, measure, monkeypatch):
    import torch

    from runner.backoff import MemoryBackoff

    # 64 long prompts on a GPU (16 in the dry run): the full batch needs far more memory than one.
    queries = _queries(tokenizer, small_data, shots=4, per_dataset=4 if tier.dry_run else 16, split="train")
    spec = GreedySpec(max_new_tokens=8, stop=())
    first = len(queries)

    def work(part):
        return generate_batch(wide, tokenizer, part, spec, tier.device)

    reference = answers(work(queries))
    if tier.dry_run:
        # No allocator to cap on a CPU: a forward pass over more than 8 rows raises what CUDA would.
        def refuse(module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is not None and ids.shape[0] > 8:
                raise torch.OutOfMemoryError("simulated: more than 8 rows")

        hook = wide.register_forward_pre_hook(refuse, with_kwargs=True)
    else:
        hook = None
        torch.cuda.empty_cache()
        start = torch.cuda.memory_allocated()
        peak_one = max(r["batch_peak_memory_bytes"] for r in work(queries[:1])) - start
        peak_all = max(r["batch_peak_memory_bytes"] for r in work(queries)) - start
        measure("extra_bytes_batch_1", peak_one)
        measure(f"extra_bytes_batch_{first}", peak_all)
        assert peak_all > 8 * peak_one + (64 << 20), "the full batch needs far more memory than one prompt"
        # A quarter of the way from one prompt to the full batch: the full batch and its half fail.
        limit = peak_one + (peak_all - peak_one) // 4
        torch.cuda.empty_cache()
        total = torch.cuda.get_device_properties(0).total_memory
        # The cap is on memory the allocator reserves; +20 MiB for one more segment's rounding.
        torch.cuda.set_per_process_memory_fraction((torch.cuda.memory_reserved() + limit + (20 << 20)) / total)
    try:
        backoff = MemoryBackoff(first)
        parts = backoff.run(queries, work)
    finally:
        if hook is not None:
            hook.remove()
        if not tier.dry_run:
            torch.cuda.set_per_process_memory_fraction(1.0)
    rows = [r for _, part_rows in parts for r in part_rows]
    measure("batch_size_after_backoff", backoff.limit)
    measure("backoff_vs_full_batch", agreement(answers(rows), reference).as_dict())
    assert 1 <= backoff.limit < first and len(rows) == first
    assert sorted(r["id"] for r in rows) == sorted(reference)
    assert agreement(answers(rows), reference).prefix >= tier.floor(PREFIX_FLOOR)

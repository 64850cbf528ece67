"""Prompts are built the same way for training and inference; batching does not change answers."""

from __future__ import annotations

import random

import pytest

from runner.data import load_split
from runner.decoding.greedy import GreedySpec
from runner.generate import Query, cut_at_stop, generate_batch, length_batches
from runner.icl import PromptFormat, select_shots, shot_rng
from runner.manifest import IclSpec
from runner.models import load_tokenizer
from runner.train import tokenize_for_training
from conftest import SYNTHETIC


@pytest.fixture(scope="module")
def tokenizer(tiny_models):
    return load_tokenizer(str(tiny_models["llama"]))


def test_shots_come_from_the_pool_and_never_repeat_the_query(small_data):
    train = load_split(small_data, SYNTHETIC, "train")
    query = train[3]
    for seed in range(20):
        shots = select_shots(query, train, 5, shot_rng(seed, query))
        assert len(shots) == 5 and query not in shots and all(s.input != query.input for s in shots)
        assert all(s.split == "train" for s in shots)
    assert select_shots(query, train, 3, shot_rng(1, query)) == select_shots(query, train, 3, shot_rng(1, query))


def test_fit_drops_shots_but_never_the_query(small_data, tokenizer):
    train = load_split(small_data, SYNTHETIC, "train")
    fmt = PromptFormat(tokenizer, IclSpec(shots=8))
    query = load_split(small_data, SYNTHETIC, "dev")[0]
    shots = select_shots(query, train, 8, random.Random(0))
    full = fmt.encode(fmt.prompt(query, shots))
    prompt, ids = fmt.fit(query, shots, budget=len(full) // 2)
    assert len(ids) <= len(full) // 2 and 0 < len(prompt.shot_ids) < 8
    assert prompt.text.endswith(fmt.prompt(query).text.split("\n\n")[-1])


def test_training_masks_the_prompt_and_keeps_the_whole_answer(small_data, tokenizer):
    examples = load_split(small_data, ["synthetic_extractive"], "train", 3)
    fmt = PromptFormat(tokenizer, IclSpec())
    columns = tokenize_for_training(examples, fmt, max_length=24)
    for example, ids, mask in zip(examples, columns["input_ids"], columns["completion_mask"]):
        assert len(ids) == len(mask) <= 24
        answer = tokenizer.decode([t for t, m in zip(ids, mask) if m])
        assert answer == f" {example.answers[0]}{tokenizer.eos_token}"
        prompt_ids = fmt.encode(fmt.prompt(example))
        assert ids[: mask.index(1)] == prompt_ids[len(prompt_ids) - mask.index(1):], "prompt tail as inference sees it"


def test_chat_template_wraps_prompt_and_completion_ends_the_turn(small_data, tiny_models):
    tokenizer = load_tokenizer(str(tiny_models["llama"]))
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    fmt = PromptFormat(tokenizer, IclSpec(), "chat")
    example = load_split(small_data, ["synthetic_yes_no"], "dev", 1)[0]
    prompt = fmt.prompt(example)
    assert prompt.text.startswith("<s><|user|>") and prompt.text.endswith("<|assistant|>") and fmt.style == "chat"
    assert not prompt.add_special_tokens and fmt.encode(prompt).count(tokenizer.bos_token_id) == 1
    assert fmt.completion(prompt, "yes") == "yes<|end|>"
    assert PromptFormat(tokenizer, IclSpec(), "plain").style == "plain"


def test_cut_at_stop_uses_the_earliest_stop_string():
    assert cut_at_stop("paris\nQuestion: x", ["\n", "Question"]) == ("paris", True)
    assert cut_at_stop("paris", ["\n"]) == ("paris", False)


@pytest.fixture(scope="module")
def llama_queries(small_data, tiny_models):
    """The tiny Llama in float32, its tokenizer, and 12 zero-shot queries of mixed prompt lengths."""
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(str(tiny_models["llama"]))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_models["llama"]), dtype="float32").eval()
    fmt = PromptFormat(tokenizer, IclSpec())
    queries = [Query.unfitted(fmt, example) for example in load_split(small_data, SYNTHETIC, "dev", 3)]
    return model, tokenizer, queries


def _answers(llama_queries, spec, batch_size: int) -> dict[str, str]:
    model, tokenizer, queries = llama_queries
    rows = [r for b in length_batches(queries, batch_size) for r in generate_batch(model, tokenizer, b, spec, "cpu")]
    return {r["id"]: r["raw_output"] for r in rows}


def test_greedy_answers_do_not_depend_on_batch_size_in_float32(llama_queries):
    spec = GreedySpec(max_new_tokens=8, stop=())
    answers = {batch_size: _answers(llama_queries, spec, batch_size) for batch_size in (1, 5, 12)}
    queries = llama_queries[2]
    assert answers[1] == answers[5] == answers[12]
    assert len({len(q.input_ids) for q in queries}) > 1, "batches really mix prompt lengths (padding exercised)"


def test_token_count_ends_at_the_stop_string_even_when_generation_ran_past_it(tokenizer):
    from runner.generate import tokens_through_stop

    ran_past = tokenizer("paris\nQuestion: who", add_special_tokens=False)["input_ids"]
    needed = tokens_through_stop(tokenizer, ran_past, ["\n"])
    assert "\n" in tokenizer.decode(ran_past[:needed]) and "\n" not in tokenizer.decode(ran_past[: needed - 1])
    assert tokens_through_stop(tokenizer, ran_past, ["zzz"]) == len(ran_past)


def test_per_dataset_shots_come_from_the_querys_dataset(small_data):
    train = load_split(small_data, SYNTHETIC, "train")
    query = load_split(small_data, SYNTHETIC, "dev")[7]
    shots = select_shots(query, train, 5, shot_rng(0, query), "per_dataset")
    assert len(shots) == 5 and {s.dataset for s in shots} == {query.dataset}


@pytest.mark.parametrize("dataset", ["synthetic_yes_no", "synthetic_multiple_choice"])
def test_balanced_shots_spread_evenly_over_answer_labels(small_data, dataset):
    from collections import Counter

    from runner.icl import answer_label

    train = load_split(small_data, [dataset], "train")
    query = load_split(small_data, [dataset], "dev")[0]
    labels = sorted({answer_label(e) for e in train})
    k = 2 * len(labels)
    shots = select_shots(query, train, k, shot_rng(3, query), "balanced")
    assert Counter(answer_label(s) for s in shots) == {label: 2 for label in labels}


def test_same_shots_for_all_gives_every_query_one_set(small_data):
    train = load_split(small_data, SYNTHETIC, "train")
    queries = load_split(small_data, SYNTHETIC, "dev")[:6]
    shared = {tuple(s.id for s in select_shots(q, train, 3, shot_rng(5, q, same_for_all=True))) for q in queries}
    fresh = {tuple(s.id for s in select_shots(q, train, 3, shot_rng(5, q))) for q in queries}
    assert len(shared) == 1 and len(fresh) > 1


def test_sampled_answers_depend_on_seed_and_example_not_on_batching(llama_queries):
    from runner.decoding.sample import SampleSpec

    def sampled(seed: int, batch_size: int) -> dict[str, str]:
        return _answers(llama_queries, SampleSpec(temperature=1.0, seed=seed, max_new_tokens=8, stop=()), batch_size)

    greedy = _answers(llama_queries, GreedySpec(max_new_tokens=8, stop=()), 12)
    assert sampled(1, 1) == sampled(1, 5) == sampled(1, 12)
    assert sampled(1, 12) != sampled(2, 12)
    assert sampled(1, 12) != greedy


def test_reference_likelihood_counts_answer_tokens_only_and_ignores_batching(llama_queries, tiny_models):
    import torch

    from runner.perplexity import reference_nll

    model, tokenizer, queries = llama_queries
    fmt = PromptFormat(tokenizer, IclSpec())
    batched = reference_nll(model, fmt, queries, "cpu", 4096)
    for query, (nll, tokens) in zip(queries, batched):
        answer = tokenizer(fmt.completion(query.prompt, query.example.answers[0]), add_special_tokens=False)["input_ids"]
        ids = torch.tensor([query.input_ids + answer])
        with torch.inference_mode():
            log_probs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
        expected = -sum(log_probs[len(query.input_ids) - 1 + i, token].item() for i, token in enumerate(answer))
        assert tokens == len(answer)
        assert abs(nll - expected) < 1e-3 * max(1.0, expected)


def test_reference_perplexity_is_the_exponent_of_token_weighted_mean_nll():
    import math

    from runner.score import reference_perplexity

    rows = [{"reference_nll": 2.0, "reference_tokens": 1}, {"reference_nll": 6.0, "reference_tokens": 3}, {"reference_nll": None, "reference_tokens": None}]
    assert reference_perplexity(rows) == pytest.approx(math.exp(8.0 / 4))
    assert reference_perplexity(rows[2:]) is None


def test_static_cache_gives_the_same_greedy_answers_as_the_dynamic_cache(llama_queries):
    dynamic = _answers(llama_queries, GreedySpec(max_new_tokens=8, stop=()), batch_size=5)
    static = _answers(llama_queries, GreedySpec(max_new_tokens=8, stop=(), cache="static"), batch_size=5)
    assert static == dynamic

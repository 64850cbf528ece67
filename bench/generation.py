"""Generation throughput, side by side in one process on the same model and prompts.

Variants: the original study's loop (one `generate` call per example), qabench's batched
generation (left padding, length-grouped batches), and prompt lookup at batch 1. Greedy, no stop
strings, so every variant must produce the same text; the table says whether it did.

    .venv/bin/python bench/generation.py [--examples 48] [--batch-size 16] [--max-new-tokens 24]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from runner.data import load_split  # noqa: E402
from runner.decoding.greedy import GreedySpec  # noqa: E402
from runner.decoding.prompt_lookup import PromptLookupSpec  # noqa: E402
from runner.generate import Query, generate_batch, length_batches  # noqa: E402
from runner.icl import PromptFormat  # noqa: E402
from runner.manifest import IclSpec  # noqa: E402
from runner.models import load_tokenizer, packaged_model_dir  # noqa: E402

DATASETS = ["synthetic_yes_no", "synthetic_multiple_choice", "synthetic_extractive", "synthetic_abstractive"]


def original_loop(model, tokenizer, queries, max_new_tokens):
    """The seed study's loop: tokenize and generate one example at a time."""
    import torch

    outputs = {}
    for query in queries:
        ids = torch.tensor([query.input_ids])
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, temperature=None, top_p=None, top_k=None)
        new = out[0, ids.shape[1]:].tolist()
        while new and new[-1] == tokenizer.pad_token_id:
            new.pop()
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos) if isinstance(eos, (list, tuple)) else {eos}
        for position, token in enumerate(new):
            if token in eos_ids:
                new = new[:position]
                break
        outputs[query.example.id] = (len(new), tokenizer.decode(new, skip_special_tokens=True))
    return outputs


def ours(model, tokenizer, queries, spec):
    rows = [r for batch in length_batches(queries, spec.batch_size) for r in generate_batch(model, tokenizer, batch, spec, "cpu")]
    return {r["id"]: (r["output_tokens"], r["raw_output"]) for r in rows}, rows


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM

    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    args = parser.parse_args()

    folder, _ = packaged_model_dir("smollm2-135m")
    tokenizer = load_tokenizer(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    fmt = PromptFormat(tokenizer, IclSpec())
    examples = load_split(REPO / "data" / "synthetic", DATASETS, "dev", args.examples // len(DATASETS))
    queries = []
    for example in examples:
        prompt = fmt.prompt(example)
        queries.append(Query(example, prompt, fmt.encode(prompt)))
    greedy = GreedySpec(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, stop=(), warmup_batches=0)
    lookup = PromptLookupSpec(max_new_tokens=args.max_new_tokens, stop=(), num_tokens=10, max_ngram=2, warmup_batches=0)
    original_loop(model, tokenizer, queries[:2], 4)  # warm-up, not timed

    results = []
    started = time.perf_counter()
    reference = original_loop(model, tokenizer, queries, args.max_new_tokens)
    results.append(("original loop (batch 1)", time.perf_counter() - started, reference))
    for label, spec in ((f"qabench batched (batch {args.batch_size})", greedy), ("prompt lookup (batch 1)", lookup)):
        started = time.perf_counter()
        tokens, _ = ours(model, tokenizer, queries, spec)
        results.append((label, time.perf_counter() - started, tokens))

    base = None
    print(f"SmolLM2-135M-Instruct, float32, CPU threads {torch.get_num_threads()}, {len(queries)} prompts, "
          f"max_new_tokens {args.max_new_tokens}, greedy")
    print(f"{'variant':32} {'gen tokens':>10} {'seconds':>8} {'tok/s':>8} {'× loop':>7}  same text as loop")
    for label, seconds, tokens in results:
        generated = sum(count for count, _ in tokens.values())
        rate = generated / seconds
        base = base or rate
        same = sum(tokens[k] == reference[k] for k in reference)
        print(f"{label:32} {generated:>10} {seconds:>8.1f} {rate:>8.1f} {rate / base:>7.2f}  {same}/{len(reference)}")


if __name__ == "__main__":
    main()

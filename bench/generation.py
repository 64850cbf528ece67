"""Generation throughput, side by side in one process on the same model and prompts.

Variants: the original study's loop (one `generate` call per example), qabench's batched
generation as the runner does it (a run-level shared-prefix cache, suffixes prefilled in groups,
finished rows leaving the batch) and the same batches with plain left padding, and at batch 1
each assisted strategy: prompt lookup, speculative decoding with the model drafting for itself
(same tokenizer; the acceptance upper bound, so the row shows the mechanism's cost when every
proposal is right), and speculative decoding with Gemma 3 270M as a cross-tokenizer draft
(universal assisted generation). Greedy, no stop strings, so every variant must produce the same
text; the table says whether it did, and gives the acceptance rate and target forward passes per
generated token. The loop and the batched variants run `--repeats` times, interleaved, and the
fastest run of each counts (other processes on a shared machine only ever slow a run down).

`--shots 3` gives every prompt the same three training examples (`icl.same_shots_for_all`), the
k-shot setup where the shared prefix is long.

    .venv/bin/python bench/generation.py [--examples 48] [--batch-size 48] [--shots 0] [--repeats 2] [--no-assisted]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from runner.data import load_split  # noqa: E402
from runner.decoding.greedy import GreedySpec  # noqa: E402
from runner.decoding.prompt_lookup import PromptLookupSpec  # noqa: E402
from runner.decoding.speculative import SpeculativeSpec, configure_draft  # noqa: E402
from runner.generate import Query, generate_batch, length_batches  # noqa: E402
from runner.icl import PromptFormat, select_shots, shot_rng  # noqa: E402
from runner.manifest import IclSpec  # noqa: E402
from runner.models import load_tokenizer, packaged_model_dir  # noqa: E402
from runner.prefix_cache import PrefixCache, shared_prefix_length  # noqa: E402

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


def ours(model, tokenizer, queries, spec, extra=None, shared_prefix=False):
    batches = length_batches(queries, spec.batch_size)
    prefix_cache = PrefixCache(model, "cpu") if shared_prefix else None
    rows = [
        {**r, "batch": n}
        for n, batch in enumerate(batches)
        for r in generate_batch(model, tokenizer, batch, spec, "cpu", extra, prefix_cache)
    ]
    return {r["id"]: (r["output_tokens"], r["raw_output"]) for r in rows}, rows


def assisted_counts(rows) -> tuple[str, str]:
    """Acceptance rate and target forwards per generated token, formatted for the table."""
    forwards = sum({r["batch"]: r["batch_target_forwards"] for r in rows}.values())
    generated = sum(r["output_tokens"] for r in rows)
    proposed = sum(r["draft_proposed_tokens"] or 0 for r in rows)
    accepted = sum(r["draft_accepted_tokens"] or 0 for r in rows)
    rate = f"{accepted / proposed:.2f}" if proposed else "-"
    return rate, f"{forwards / generated:.2f}" if generated else "-"


def draft_model(folder, spec):
    """A draft loaded as `runner.decoding.speculative.prepare` would, with its proposal settings."""
    import torch
    from transformers import AutoModelForCausalLM

    draft = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    configure_draft(draft, spec)
    return draft


def build_queries(tokenizer, examples: int, shots: int) -> list[Query]:
    """Zero-shot prompts, or prompts that all carry the same `shots` training examples."""
    fmt = PromptFormat(tokenizer, IclSpec())
    evaluate = load_split(REPO / "data" / "synthetic", DATASETS, "dev", examples // len(DATASETS))
    pool = load_split(REPO / "data" / "synthetic", DATASETS, "train", 64)
    return [Query.unfitted(fmt, e, select_shots(e, pool, shots, shot_rng(0, e, same_for_all=True))) for e in evaluate]


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM

    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=48)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--shots", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-assisted", dest="assisted", action="store_false", help="skip the batch-1 assisted strategies")
    args = parser.parse_args()

    folder, _ = packaged_model_dir("smollm2-135m")
    tokenizer = load_tokenizer(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    queries = build_queries(tokenizer, args.examples, args.shots)
    greedy = GreedySpec(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, stop=(), warmup_batches=0)
    original_loop(model, tokenizer, queries[:2], 4)  # warm-up, not timed
    ours(model, tokenizer, queries[: min(8, len(queries))], greedy, shared_prefix=True)

    batched = f"batch {args.batch_size}"
    repeated = [
        ("original loop (batch 1)", lambda: (original_loop(model, tokenizer, queries, args.max_new_tokens), None)),
        (f"qabench batched: shared prefix, finished rows leave ({batched})", lambda: ours(model, tokenizer, queries, greedy, shared_prefix=True)),
        (f"qabench batched: plain left padding ({batched})", lambda: ours(model, tokenizer, queries, greedy)),
        (f"qabench batched: plain left padding, static cache ({batched})",
         lambda: ours(model, tokenizer, queries, greedy.model_copy(update={"cache": "static"}))),
    ]
    best: dict[str, tuple[float, dict, tuple[str, str]]] = {}
    for _ in range(args.repeats):
        for label, run in repeated:
            started = time.perf_counter()
            tokens, rows = run()
            seconds = time.perf_counter() - started
            if label not in best or seconds < best[label][0]:
                best[label] = (seconds, tokens, assisted_counts(rows) if rows else ("-", "-"))
    results = [(label, *best[label]) for label, _ in repeated]
    failures: list[str] = []

    if args.assisted:
        lookup = PromptLookupSpec(max_new_tokens=args.max_new_tokens, stop=(), num_tokens=10, max_ngram=2, warmup_batches=0)
        self_spec = SpeculativeSpec(draft={"package": "smollm2-135m"}, max_new_tokens=args.max_new_tokens, stop=(), warmup_batches=0)
        cross_spec = SpeculativeSpec(draft={"package": "gemma3-270m"}, cross_tokenizer=True, max_new_tokens=args.max_new_tokens,
                                     stop=(), warmup_batches=0)
        gemma_folder, _ = packaged_model_dir("gemma3-270m")
        assisted = [
            ("prompt lookup (batch 1)", lookup, None),
            ("speculative, self draft (batch 1)", self_spec, {"assistant_model": draft_model(folder, self_spec)}),
            ("speculative, Gemma 3 270M cross-tokenizer draft (batch 1)", cross_spec,
             {"assistant_model": draft_model(gemma_folder, cross_spec), "tokenizer": tokenizer,
              "assistant_tokenizer": load_tokenizer(str(gemma_folder))}),
        ]
        for label, spec, extra in assisted:
            started = time.perf_counter()
            try:
                tokens, rows = ours(model, tokenizer, queries, spec, extra)
            except RuntimeError as error:  # a failure inside transformers: report the row, keep the table
                failures.append(f"{label}: {error}")
                continue
            results.append((label, time.perf_counter() - started, tokens, assisted_counts(rows)))

    ids = [q.input_ids for q in queries]
    prefix = shared_prefix_length(ids)
    print(f"SmolLM2-135M-Instruct, float32, CPU threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}, "
          f"{len(queries)} prompts, {args.shots}-shot, {sum(map(len, ids))} prompt tokens ({prefix} shared by all), "
          f"max_new_tokens {args.max_new_tokens}, greedy, best of {args.repeats} for the loop and batched rows")
    print("| variant | gen tokens | seconds | tok/s | × loop | same text as loop | acceptance | target fwd/token |")
    print("|---|---|---|---|---|---|---|---|")
    reference = results[0][2]
    base = None
    for label, seconds, tokens, (acceptance, forwards) in results:
        generated = sum(count for count, _ in tokens.values())
        rate = generated / seconds
        base = base or rate
        same = sum(tokens[k] == reference[k] for k in reference)
        print(f"| {label} | {generated} | {seconds:.1f} | {rate:.1f} | {rate / base:.2f} | {same}/{len(reference)} | {acceptance} | {forwards} |")
    for failure in failures:
        print(f"\nFAILED {failure}")


if __name__ == "__main__":
    main()

"""Log-likelihood scoring speed: the shared-prefix path (rows in groups of PREFILL_ROWS, or all
rows in one pass) against plain left padding, in one process on the same model and queries.

SmolLM2-135M in float32 ranks the options (or yes/no) of the synthetic multiple-choice and
yes/no dev questions, batched as `eval.protocol: loglikelihood` batches them. Each variant runs
`--repeats` times, interleaved, and the fastest run counts (other processes on a shared machine
only ever slow a run down). Every variant must give the same log-probabilities.

    .venv/bin/python bench/loglikelihood.py [--examples 16] [--batch-size 16] [--shots 0] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=16, help="dev questions per dataset")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--shots", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from runner.decoding.greedy import GreedySpec
    from runner.generate import Query
    from runner.icl import PromptFormat
    from runner.manifest import IclSpec
    from runner.models import packaged_model_dir
    from runner.prefix_cache import PREFILL_ROWS, PrefixCache
    from runner.protocols import Answering
    from runner.protocols.loglikelihood import choice_logprobs
    from runner.readers import read_split

    folder = packaged_model_dir("smollm2-135m")[0]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    datasets = ("synthetic_multiple_choice", "synthetic_yes_no")
    data = REPO / "data" / "synthetic"
    examples = [e for d in datasets for e in read_split(data / d / "dev.tsv", d, "dev", "unifiedqa_tsv").examples[: args.examples]]
    pool = [e for d in datasets for e in read_split(data / d / "train.tsv", d, "train", "unifiedqa_tsv").examples[: args.shots]]
    fmt = PromptFormat(tokenizer, IclSpec(), "plain")
    queries = sorted((Query.unfitted(fmt, e, pool) for e in examples), key=lambda q: -len(q.input_ids))
    batches = [queries[i : i + args.batch_size] for i in range(0, len(queries), args.batch_size)]

    class OnePass(PrefixCache):
        def tail_logits(self, sequences, pad_id, keep, shareable):
            from runner import prefix_cache

            saved, prefix_cache.PREFILL_ROWS = prefix_cache.PREFILL_ROWS, len(sequences)
            try:
                return super().tail_logits(sequences, pad_id, keep, shareable)
            finally:
                prefix_cache.PREFILL_ROWS = saved

    variants = {
        f"shared prefix, groups of {PREFILL_ROWS}": lambda: PrefixCache(model, "cpu"),
        "shared prefix, one pass": lambda: OnePass(model, "cpu"),
        "left padding, no sharing": lambda: None,
    }
    best: dict[str, float] = {}
    results: dict[str, list] = {}
    for _ in range(args.repeats):
        for name, cache in variants.items():
            state = Answering(model, fmt, GreedySpec(), "cpu", {}, cache())
            started = time.perf_counter()
            results[name] = [choice_logprobs(state, batch)[0] for batch in batches]
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - started)
    reference = results["left padding, no sharing"]
    rows = sum(len(q) for b in reference for q in b)
    print(f"{len(queries)} questions, {rows} choices, batch {args.batch_size}, {args.shots} shots, fastest of {args.repeats}")
    for name, seconds in best.items():
        gap = max(abs(a - b) for x, y in zip(results[name], reference) for p, q in zip(x, y) for a, b in zip(p, q))
        print(f"  {name:<28} {seconds:7.2f} s   max |Δ logprob| vs left padding {gap:.1e}")


if __name__ == "__main__":
    main()

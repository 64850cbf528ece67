"""Training throughput: naive max-length padding vs qabench's length-grouped batches.

Both variants run `runner.train.train`, the code `runner run` trains with, on the same model,
the same examples (one epoch: steps × batch_size examples, each seen once) and the same number
of optimizer steps. They differ in two trainer settings only:

- naive: every batch padded to `max_seq_length` (trl's collator with `pad_to_multiple_of` =
  max_seq_length), examples in random order — the baseline named in issue 8;
- qabench: batches of similar length (`group_by_length`), each padded to its own longest row.

The examples are the synthetic UnifiedQA sets with each context lengthened by a seeded number of
other examples' contexts, so prompt lengths spread from ~80 to ~500 tokens as real UnifiedQA
data does (BoolQ questions next to NarrativeQA summaries). Every variant runs in its own
subprocess, one after another: peak memory is the process's resident-set high-water mark
(model weights included), which never falls within a process, so variants cannot share one.

How well length grouping works depends on the training set's size: transformers'
LengthGroupedSampler sorts lengths within mega-batches of min(50, N // (4 × batch_size))
batches, so a set of 24 examples in batches of 4 is not grouped at all. The default, 16 steps
× 4 = 64 examples, gives mega-batches of 4 batches; a real training set (mega-batches of 50)
leaves less padding than this bench does.

The development machine's two cores are shared, so wall time swings with other people's load.
The table therefore also gives CPU seconds per step (this process's user + system time, OpenMP
threads told to sleep rather than spin while waiting, so time-slicing does not count as work),
and `--repeats 2` runs each pair twice in the order naive, qabench, qabench, naive so that load
drifting during the run weighs on both sides alike.

    .venv/bin/python bench/training.py [--steps 16] [--batch-size 4] [--max-seq-length 512]
                                       [--methods lora qlora] [--repeats 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from runner.atomic import write_atomic  # noqa: E402

DATASETS = ["synthetic_yes_no", "synthetic_multiple_choice", "synthetic_extractive", "synthetic_abstractive"]
BATCHING = ("naive", "qabench")
METHODS = {
    # The seed study's adapter settings (r 8, alpha 8) on every linear layer.
    "lora": {"kind": "lora", "r": 8, "alpha": 8},
    "qlora": {"kind": "qlora", "bits": 4, "r": 8, "alpha": 8},
}


def uneven_examples(count: int, seed: int, max_extra: int) -> list:
    """`count` synthetic train examples whose contexts carry 0..max_extra borrowed contexts."""
    from runner.data import load_split

    pool = load_split(REPO / "data" / "synthetic", DATASETS, "train")
    rng = random.Random(f"uneven:{seed}")  # local: the draw does not depend on anything else run
    chosen = rng.sample(pool, count)
    contexts = [e.context for e in pool if e.context]
    out = []
    for example in chosen:
        extra = [rng.choice(contexts) for _ in range(rng.randint(0, max_extra))]
        context = "\n".join([*extra, example.context]).strip()
        out.append(dataclasses.replace(example, context=context))
    return out


@contextlib.contextmanager
def naive_padding(max_length: int):
    """Make `runner.train.train` pad every batch to `max_length` and sample in random order.

    runner.train imports SFTConfig inside its function, so replacing the name on trl for the
    duration of the call changes exactly these two settings and nothing else it builds.
    """
    import trl

    original = trl.SFTConfig

    def config(**kwargs: Any):
        kwargs.update(train_sampling_strategy="random", pad_to_multiple_of=max_length)
        return original(**kwargs)

    trl.SFTConfig = config
    try:
        yield
    finally:
        trl.SFTConfig = original


def cpu_clock():
    """A trainer callback noting this process's CPU seconds (all threads) over `trainer.train`."""
    from transformers import TrainerCallback

    class CpuClock(TrainerCallback):
        started = ended = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.process_time()

        def on_train_end(self, args, state, control, **kwargs):
            self.ended = time.process_time()

    return CpuClock()


def run_variant(method: str, batching: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Train one variant in this process and return what `runner.train` measured."""
    import torch
    import transformers
    import yaml

    from runner.icl import PromptFormat
    from runner.prompt_style import requested_style
    from runner.manifest import load_manifest
    from runner.methods import METHODS as REGISTRY
    from runner.methods import MethodContext
    from runner.models import load_model
    from runner.train import tokenize_for_training, train

    manifest_path = workdir / "manifest.yaml"
    manifest_path.write_text(yaml.safe_dump({
        "name": f"bench-{method}-{batching}",
        "model": {"package": "smollm2-135m", "dtype": "float32"},
        "data": {"root": str(REPO / "data" / "synthetic"), "datasets": DATASETS},
        "method": METHODS[method],
        "train": {"steps": args.steps, "batch_size": args.batch_size, "max_seq_length": args.max_seq_length,
                  "heldout_examples": 0, "save_steps": args.steps + 1, "logging_steps": args.steps, "learning_rate": 2e-4},
    }))
    loaded = load_manifest(manifest_path)
    manifest = loaded.manifest
    base = load_model(loaded)
    fmt = PromptFormat(base.tokenizer, manifest.icl, requested_style(manifest))
    examples = uneven_examples(args.steps * args.batch_size, args.seed, args.max_extra_contexts)
    lengths = [len(ids) for ids in tokenize_for_training(examples, fmt, args.max_seq_length)["input_ids"]]
    registered = REGISTRY.get(METHODS[method]["kind"])
    context = MethodContext(total_steps=args.steps, model_type=base.model.config.model_type, tokenizer=base.tokenizer, device=base.device)
    transformers.set_seed(manifest.train.seed)
    model = registered.apply(base.model, manifest.method, context)
    clock = cpu_clock()
    with naive_padding(args.max_seq_length) if batching == "naive" else contextlib.nullcontext():
        result = train(
            model, fmt, examples, manifest.train,
            checkpoint_dir=workdir / "checkpoints", log_path=workdir / "train_log.jsonl",
            extra_callbacks=lambda steps: [*registered.trainer_callbacks(model, manifest.method, steps), clock],
            device=base.device, use_bf16=False,
        )
    return {
        "method": method, "batching": batching, "threads": torch.get_num_threads(),
        "lengths": {"min": min(lengths), "mean": sum(lengths) / len(lengths), "max": max(lengths)},
        "cpu_seconds": clock.ended - clock.started,
        **result.as_dict(),
    }


def measure(method: str, batching: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one variant in a fresh interpreter (its own RSS high-water mark) and read its result."""
    with tempfile.TemporaryDirectory() as folder:
        result = Path(folder) / "result.json"
        command = [sys.executable, __file__, "--child", f"{method}:{batching}", "--result", str(result),
                   "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--max-seq-length", str(args.max_seq_length),
                   "--max-extra-contexts", str(args.max_extra_contexts), "--seed", str(args.seed)]
        # Waiting OpenMP threads sleep instead of spinning: CPU time then counts work, not waiting.
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false"}
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=env)
        return json.loads(result.read_text())


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from repeated runs of a variant: summed tokens and times, the highest peak."""
    row = dict(runs[0])
    for key in ("seconds", "cpu_seconds", "real_tokens", "padded_tokens", "steps"):
        row[key] = sum(r[key] for r in runs)
    row["peak_memory_bytes"] = max(r["peak_memory_bytes"] for r in runs)
    row["tokens_per_second"] = row["real_tokens"] / row["seconds"]
    row["padding_fraction"] = 1 - row["real_tokens"] / row["padded_tokens"]
    row["runs"] = runs
    return row


def table(rows: list[dict[str, Any]]) -> str:
    """The markdown table: one row per variant, ratios against the naive row of the same method."""
    lines = ["| variant | real tokens/s | padded share | s/step | CPU s/step | peak RSS MiB | × naive, wall | × naive, CPU |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        naive = next(r for r in rows if r["method"] == row["method"] and r["batching"] == "naive")
        label = f"{row['method']}, {'naive max-length padding' if row['batching'] == 'naive' else 'qabench length-grouped'}"
        cpu_per_step, naive_cpu = row["cpu_seconds"] / row["steps"], naive["cpu_seconds"] / naive["steps"]
        lines.append(
            f"| {label} | {row['tokens_per_second']:.1f} | {row['padding_fraction']:.0%} | {row['seconds'] / row['steps']:.1f} | "
            f"{cpu_per_step:.1f} | {row['peak_memory_bytes'] / 2**20:.0f} | {row['tokens_per_second'] / naive['tokens_per_second']:.2f} | "
            f"{naive_cpu / cpu_per_step:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    """Measure every variant in its own process and print the table (or, as --child, one variant)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-seq-length", type=int, default=512)
    parser.add_argument("--max-extra-contexts", type=int, default=10, help="most borrowed contexts added to one example")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=["lora", "qlora"])
    parser.add_argument("--repeats", type=int, choices=(1, 2), default=1, help="2: naive, qabench, qabench, naive")
    parser.add_argument("--json", type=Path, help="also write the raw rows here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        method, batching = args.child.split(":")
        with tempfile.TemporaryDirectory() as workdir:
            write_atomic(args.result, json.dumps(run_variant(method, batching, args, Path(workdir))))
        return

    order = list(BATCHING) + list(reversed(BATCHING)) * (args.repeats - 1)
    rows = []
    for method in args.methods:
        runs: dict[str, list] = {b: [] for b in BATCHING}
        for batching in order:
            runs[batching].append(measure(method, batching, args))
            last = runs[batching][-1]
            print(f"measured {method}/{batching}: {last['seconds']:.1f} s wall, {last['cpu_seconds']:.1f} s CPU", file=sys.stderr, flush=True)
        rows += [combine(runs[b]) for b in BATCHING]
    lengths = rows[0]["lengths"]
    print(f"SmolLM2-135M-Instruct, float32, CPU threads {rows[0]['threads']}, {args.steps} steps × batch {args.batch_size} "
          f"(one epoch of {args.steps * args.batch_size} examples) × {args.repeats} run(s) per variant, max_seq_length "
          f"{args.max_seq_length}, sequence tokens min/mean/max {lengths['min']}/{lengths['mean']:.0f}/{lengths['max']}")
    if args.json:
        write_atomic(args.json, json.dumps(rows, indent=2))
    print(table(rows))


if __name__ == "__main__":
    main()

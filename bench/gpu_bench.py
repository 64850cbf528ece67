"""GPU benchmark sections run by bench/gpu.sh, one process per section.

    python3 bench/gpu_bench.py SECTION --out DIR [--tiny] [--seconds S]
    python3 bench/gpu_bench.py report --out DIR

Each section writes DIR/<section>.json, rewritten after every measurement, so a section cut off
by its time limit or by an out-of-memory error keeps what it measured; a section that raises
records the error and exits 1. `report` turns whatever sections finished into one Markdown table
(DIR/gpu-bench.md, also printed) and one JSON file with every raw number (DIR/gpu-bench.json).
A separate process per section also makes each peak-memory figure that section's own.

`--tiny` swaps in tiny shapes in float32 (bench/gpu_models.py), so the whole script can be
dry-run on a CPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import gpu_models  # noqa: E402
from runner.atomic import write_atomic  # noqa: E402

# Memory bandwidth by card, TB/s (vendor data sheets); the first pattern that matches the
# device name wins, so the specific names come before the general ones.
BANDWIDTHS = [
    (r"H200", "H200", 4.8),
    (r"H100.*NVL", "H100 NVL", 3.9),
    (r"H100.*PCIe", "H100 PCIe", 2.0),
    (r"H100", "H100 SXM", 3.35),
    (r"A100.*80GB", "A100 80GB", 2.0),
    (r"A100", "A100 40GB", 1.56),
    (r"\bL4\b", "L4", 0.3),
]
BATCH_SIZES = (1, 8, 32, 64)
QLORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class Context:
    """What every section gets: where to write, which sizes, and when to stop starting work."""

    out: Path
    section: str
    tiny: bool
    device: str
    deadline: float
    """time.monotonic() after which no new measurement starts."""
    result: dict[str, Any] = field(default_factory=dict)

    def save(self) -> None:
        """Write the section's JSON whole: a section killed by its timeout leaves the last complete one."""
        write_atomic(self.out / f"{self.section}.json", json.dumps(self.result, indent=2, default=str))

    def time_left(self) -> float:
        """Seconds until the section's deadline."""
        return self.deadline - time.monotonic()

    @property
    def dtype(self):
        import torch

        # bf16 as qabench's dtype `auto` picks on a GPU; float32 where a dry run has no bf16 kernels.
        return torch.bfloat16 if self.device == "cuda" and not self.tiny else torch.float32

    def sync(self) -> None:
        """Wait for queued GPU work, so a clock read after it covers that work."""
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()


def bandwidth_for(name: str) -> tuple[str, float] | None:
    """(card, TB/s) for a device name, from BANDWIDTHS or QABENCH_GPU_BANDWIDTH_TBS."""
    if os.environ.get("QABENCH_GPU_BANDWIDTH_TBS"):
        return f"QABENCH_GPU_BANDWIDTH_TBS for {name}", float(os.environ["QABENCH_GPU_BANDWIDTH_TBS"])
    for pattern, card, tb_s in BANDWIDTHS:
        if re.search(pattern, name):
            return card, tb_s
    return None


def section_env(ctx: Context) -> None:
    """Device, driver-visible memory, package versions and the bandwidth the bound will use."""
    import bitsandbytes
    import peft
    import torch
    import transformers
    import trl

    name = torch.cuda.get_device_name() if ctx.device == "cuda" else "cpu"
    found = bandwidth_for(name)
    ctx.result.update(
        device=name,
        memory_gib=torch.cuda.get_device_properties(0).total_memory / 2**30 if ctx.device == "cuda" else None,
        versions={"torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
                  "peft": peft.__version__, "trl": trl.__version__, "bitsandbytes": bitsandbytes.__version__},
        bandwidth_card=found[0] if found else None,
        bandwidth_tb_s=found[1] if found else None,
        git_sha=os.environ.get("QABENCH_GIT_SHA"),
        tiny=ctx.tiny,
    )


def _sizes(ctx: Context) -> dict[str, int]:
    """Prompt lengths, answer length and loop sample size: QA-sized prompts, or tiny for a dry run."""
    if ctx.tiny:
        return {"shortest": 12, "longest": 24, "new_tokens": 8, "loop_prompts": 2}
    return {"shortest": 96, "longest": 160, "new_tokens": 64, "loop_prompts": 4}


def study_loop(ctx: Context, model: Any, queries: list, new_tokens: int) -> list[dict[str, float]]:
    """The original study's loop: one `generate` call per prompt; seconds and tokens of each."""
    import torch

    timings = []
    for query in queries:
        ids = torch.tensor([query.input_ids], device=ctx.device)
        ctx.sync()
        started = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, do_sample=False, pad_token_id=gpu_models.PAD)
        ctx.sync()
        timings.append({"seconds": time.perf_counter() - started, "tokens": out.shape[1] - ids.shape[1]})
    return timings


def ours(model: Any, tokenizer: Any, queries: list, spec: Any, ctx: Context, extra: dict[str, Any]) -> dict[str, Any]:
    """qabench's `generate_batch` over length-grouped batches; tokens, seconds and decode-only rate."""
    from runner.generate import generate_batch, length_batches

    tokens = seconds = decode_seconds = decode_tokens = 0.0
    peak, rows = 0, []
    for batch in length_batches(queries, spec.batch_size):
        batch_rows = generate_batch(model, tokenizer, batch, spec, ctx.device, extra)
        first = batch_rows[0]
        generated = sum(r["output_tokens"] for r in batch_rows)
        tokens += generated
        seconds += first["batch_seconds"]
        # Decode-only: after the prefill pass that produced the first token of every row.
        decode_seconds += first["batch_seconds"] - (first["batch_first_token_seconds"] or 0.0)
        decode_tokens += generated - len(batch_rows)
        peak = max(peak, first["batch_peak_memory_bytes"])
        rows += batch_rows
    return {"prompts": len(queries), "tokens": int(tokens), "seconds": seconds, "tokens_per_second": tokens / seconds,
            "decode_tokens_per_second": decode_tokens / decode_seconds if decode_seconds else None,
            "peak_memory_bytes": peak, "rows": rows}


def _generation_setup(ctx: Context, shape_name: str):
    from runner.decoding.greedy import GreedySpec

    spec = gpu_models.shape(shape_name, ctx.tiny)
    sizes = _sizes(ctx)
    model = gpu_models.build_model(spec, ctx.device, ctx.dtype)
    tokenizer = gpu_models.id_tokenizer(spec.config["vocab_size"])
    queries = gpu_models.queries(max(BATCH_SIZES), spec.config["vocab_size"], sizes["shortest"], sizes["longest"], seed=0)
    # Random weights may pick EOS at any step; every answer is forced to the same length instead.
    extra = {"min_new_tokens": sizes["new_tokens"]}

    def greedy(batch_size: int, **fields: Any):
        return GreedySpec(max_new_tokens=sizes["new_tokens"], batch_size=batch_size, stop=(), warmup_batches=0, **fields)

    ctx.result.update(shape=spec.name, dtype=str(ctx.dtype), weight_bytes=gpu_models.weight_bytes(model),
                      new_tokens=sizes["new_tokens"], prompt_tokens=[sizes["shortest"], sizes["longest"]])
    return spec, sizes, model, tokenizer, queries, extra, greedy


def _without_rows(measured: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in measured.items() if k != "rows"}


def generation(ctx: Context, shape_name: str) -> None:
    """Loop vs batched generation at batch 1, 8, 32, 64, and batch 1 against the bandwidth bound."""
    spec, sizes, model, tokenizer, queries, extra, greedy = _generation_setup(ctx, shape_name)
    # Untimed warm-up of both paths: CUDA context, cuBLAS handles, allocator pools.
    ours(model, tokenizer, queries[:2], greedy(2), ctx, extra)
    study_loop(ctx, model, queries[:1], 2)
    sample = queries[: sizes["loop_prompts"]]
    loop = study_loop(ctx, model, sample, sizes["new_tokens"])
    per_prompt = statistics.fmean(t["seconds"] for t in loop)
    ctx.result["loop"] = {"prompts_measured": len(loop), "seconds_per_prompt": per_prompt,
                          "tokens_per_second": sum(t["tokens"] for t in loop) / sum(t["seconds"] for t in loop), "timings": loop}
    ctx.result["batches"] = {}
    ctx.save()
    for batch_size in BATCH_SIZES:
        if ctx.time_left() < 10:
            ctx.result["batches"][str(batch_size)] = {"skipped": "section time limit"}
            continue
        # Batch 1 runs the loop's sample one by one; larger batches run batch_size prompts at once.
        measured = ours(model, tokenizer, sample if batch_size == 1 else queries[:batch_size], greedy(batch_size), ctx, extra)
        measured["loop_seconds_extrapolated"] = per_prompt * measured["prompts"]
        measured["x_loop"] = measured["tokens_per_second"] / ctx.result["loop"]["tokens_per_second"]
        ctx.result["batches"][str(batch_size)] = _without_rows(measured)
        ctx.save()


def compiled(ctx: Context, shape_name: str) -> None:
    """Batch 1 with `decoding.cache: static`, whose forward pass transformers compiles (CUDA
    graphs) on a GPU, against the default dynamic cache on the same prompts.

    Prompts of one length: the static cache's size is prompt + answer length, and every new size
    would compile again.
    """
    spec, sizes, model, tokenizer, _, extra, greedy = _generation_setup(ctx, shape_name)
    length = sizes["longest"]
    queries = gpu_models.queries(sizes["loop_prompts"] + 1, spec.config["vocab_size"], length, length, seed=1)
    started = time.perf_counter()
    ours(model, tokenizer, queries[:1], greedy(1, cache="static"), ctx, extra)  # compiles
    ctx.result["compile_seconds"] = time.perf_counter() - started
    ctx.result["prompt_tokens"] = [length, length]
    ctx.save()
    plain = ours(model, tokenizer, queries[1:], greedy(1), ctx, extra)
    static = ours(model, tokenizer, queries[1:], greedy(1, cache="static"), ctx, extra)
    ctx.result.update(eager=_without_rows(plain), static_compiled=_without_rows(static))


def speculative(ctx: Context, shape_name: str) -> None:
    """Speculative decoding with an exact copy of the model as its draft: every proposal can be
    accepted, so this is the acceptance upper bound and shows what the mechanism itself costs."""
    from runner.decoding.speculative import SpeculativeSpec

    spec, sizes, model, tokenizer, queries, extra, greedy = _generation_setup(ctx, shape_name)
    sample = queries[: sizes["loop_prompts"]]
    # The draft block is never loaded: the draft model goes to generate through `extra`, as
    # runner.decoding.speculative.prepare would hand it over.
    assisted = SpeculativeSpec(draft={"hub": "google/gemma-2b"}, max_new_tokens=sizes["new_tokens"], stop=(), warmup_batches=0)
    draft = copy.deepcopy(model)
    draft.generation_config.num_assistant_tokens = assisted.num_draft_tokens
    draft.generation_config.num_assistant_tokens_schedule = assisted.schedule
    with_draft = {**extra, "assistant_model": draft}
    ours(model, tokenizer, queries[-1:], greedy(1), ctx, extra)  # warm-up
    ours(model, tokenizer, queries[-1:], assisted, ctx, with_draft)
    plain = ours(model, tokenizer, sample, greedy(1), ctx, extra)
    ctx.result["plain"] = _without_rows(plain)
    ctx.save()
    drafted = ours(model, tokenizer, sample, assisted, ctx, with_draft)
    rows = drafted["rows"]
    proposed = sum(r["draft_proposed_tokens"] or 0 for r in rows)
    accepted = sum(r["draft_accepted_tokens"] or 0 for r in rows)
    same = sum(a["raw_output"] == b["raw_output"] for a, b in zip(plain["rows"], rows))
    ctx.result["speculative"] = {
        **_without_rows(drafted),
        "num_draft_tokens": assisted.num_draft_tokens, "schedule": assisted.schedule,
        "proposed": proposed, "accepted": accepted, "acceptance": accepted / proposed if proposed else None,
        # One prompt per batch, so every row's batch_target_forwards is its own count.
        "target_forwards_per_token": sum(r["batch_target_forwards"] for r in rows) / drafted["tokens"],
        "same_tokens_as_plain": same, "x_plain": drafted["tokens_per_second"] / plain["tokens_per_second"],
    }


def qlora(ctx: Context, shape_name: str) -> None:
    """QLoRA 4-bit training steps through runner.train, gradient checkpointing on: time and peak memory."""
    import torch
    from transformers import TrainerCallback

    from runner.icl import PromptFormat
    from runner.manifest import IclSpec, TrainSpec
    from runner.methods import METHODS, MethodContext
    from runner.methods.qlora import QloraSpec
    from runner.train import train

    spec = gpu_models.shape(shape_name, ctx.tiny)
    batch, length, steps = (4, 64, 3) if ctx.tiny else (4, 512, 6)
    method = METHODS.get("qlora")
    # The seed study's QLoRA: NF4, double quantization, r 8, alpha 8 on every projection.
    adapter = QloraSpec(bits=4, r=8, alpha=8, target_modules=QLORA_TARGETS)
    model = gpu_models.build_quantized(spec, ctx.device, ctx.dtype, method.load_kwargs(adapter, ctx.device))
    weights_allocated = torch.cuda.memory_allocated() if ctx.device == "cuda" else None
    tokenizer = gpu_models.id_tokenizer(spec.config["vocab_size"])
    fmt = PromptFormat(tokenizer, IclSpec())
    # Prompts longer than max_seq_length: tokenize_for_training cuts every one to exactly `length`.
    examples = gpu_models.training_examples(batch * steps, spec.config["vocab_size"], length + 32, seed=0)
    settings = TrainSpec(steps=steps, batch_size=batch, max_seq_length=length, gradient_checkpointing=True,
                         heldout_examples=0, save_steps=steps + 1, logging_steps=1, learning_rate=2e-4)
    context = MethodContext(total_steps=steps, model_type=model.config.model_type, tokenizer=tokenizer, device=ctx.device)
    model = method.apply(model, adapter, context)

    class StepClock(TrainerCallback):
        """Wall time of each optimizer step, the GPU's queue drained at both ends."""

        def __init__(self):
            self.times: list[float] = []
            self.started = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            ctx.sync()
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            ctx.sync()
            self.times.append(time.perf_counter() - self.started)

    clock = StepClock()
    with tempfile.TemporaryDirectory() as scratch:  # save_steps > steps: nothing is saved, but train() wants a folder
        result = train(model, fmt, examples, settings, checkpoint_dir=Path(scratch), log_path=ctx.out / "qlora-train-log.jsonl",
                       extra_callbacks=lambda total: [*method.trainer_callbacks(model, adapter, total), clock],
                       device=ctx.device, use_bf16=ctx.dtype == torch.bfloat16)
    after_first = clock.times[1:] or clock.times
    ctx.result.update(
        shape=spec.name, batch_size=batch, sequence_tokens=length, steps=result.steps, gradient_checkpointing=True,
        optimizer=settings.optimizer, step_seconds=clock.times, median_step_seconds_after_first=statistics.median(after_first),
        real_tokens=result.real_tokens, padded_tokens=result.padded_tokens,
        tokens_per_second=result.real_tokens / sum(clock.times), final_loss=result.final_loss,
        peak_memory_bytes=result.peak_memory_bytes,
        peak_reserved_bytes=torch.cuda.max_memory_reserved() if ctx.device == "cuda" else None,
        weights_allocated_bytes=weights_allocated, trainable_parameters=result.trainable_parameters,
        total_parameters=result.total_parameters,
    )


SECTIONS: dict[str, Callable[[Context], None]] = {
    "env": section_env,
    "generation-gemma-2b": lambda ctx: generation(ctx, "gemma-2b"),
    "qlora-llama-2-7b": lambda ctx: qlora(ctx, "llama-2-7b"),
    "speculative-gemma-2b": lambda ctx: speculative(ctx, "gemma-2b"),
    "generation-llama-2-7b": lambda ctx: generation(ctx, "llama-2-7b"),
    "compiled-gemma-2b": lambda ctx: compiled(ctx, "gemma-2b"),
}


def run_section(name: str, out: Path, tiny: bool, seconds: float) -> int:
    """Run one section, saving its result whatever happens; 0 on success, 1 on an exception."""
    import torch

    ctx = Context(out=out, section=name, tiny=tiny, device="cuda" if torch.cuda.is_available() else "cpu",
                  deadline=time.monotonic() + seconds)
    ctx.result.update(section=name, ok=False, started=time.time())
    ctx.save()
    try:
        SECTIONS[name](ctx)
        ctx.result["ok"] = True
        return 0
    except Exception as exc:  # recorded for the report; the other sections still run
        ctx.result["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        traceback.print_exc()
        return 1
    finally:
        ctx.result["seconds"] = time.time() - ctx.result["started"]
        ctx.save()


def main() -> int:
    """Run one section, or write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("section", choices=[*SECTIONS, "report"])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes in float32: a dry run on any device")
    parser.add_argument("--seconds", type=float, default=600, help="no new measurement starts after this")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.section == "report":
        from gpu_report import write_report

        print(write_report(args.out, list(SECTIONS)))
        return 0
    return run_section(args.section, args.out, args.tiny, args.seconds)


if __name__ == "__main__":
    sys.exit(main())

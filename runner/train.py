"""Supervised fine-tuning with trl, the same for every method: the method only wraps the model.

Examples are tokenized here, with the prompt format inference uses, into `input_ids` plus a
`completion_mask`, so trl computes the loss on answer tokens only and never re-tokenizes.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from runner.console import log, progress
from runner.data import Example
from runner.icl import PromptFormat
from runner.manifest import TrainSpec


@dataclass(frozen=True)
class TrainResult:
    """What training reports for metrics and provenance."""

    steps: int
    seconds: float
    train_tokens: int
    final_loss: float | None
    trainable_parameters: int
    total_parameters: int


def tokenize_for_training(examples: Sequence[Example], fmt: PromptFormat, max_length: int) -> dict[str, list]:
    """Columns input_ids and completion_mask; over-long prompts lose tokens from their start."""
    input_ids, completion_mask = [], []
    for example in examples:
        prompt = fmt.prompt(example)
        prompt_ids = fmt.encode(prompt)
        answer_ids = fmt.tokenizer(fmt.completion(prompt, example.answers[0]), add_special_tokens=False)["input_ids"]
        answer_ids = answer_ids[: max_length // 2]
        # Keep the answer whole and the prompt's end (the question) rather than its beginning.
        prompt_ids = prompt_ids[max(0, len(prompt_ids) + len(answer_ids) - max_length):]
        input_ids.append(prompt_ids + answer_ids)
        completion_mask.append([0] * len(prompt_ids) + [1] * len(answer_ids))
    return {"input_ids": input_ids, "completion_mask": completion_mask}


def planned_steps(spec: TrainSpec, n_examples: int) -> int:
    """Optimizer steps training will run: `steps`, or epochs × examples / effective batch."""
    if spec.max_steps > 0:
        return spec.max_steps
    per_step = spec.batch_size * spec.gradient_accumulation_steps
    return max(1, math.ceil(n_examples * spec.epochs / per_step))


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def _progress_callback(total_steps: int, log_path: Path):
    from transformers import TrainerCallback

    class ProgressAndLog(TrainerCallback):
        """Advances the progress bar and appends every trainer log record to train_log.jsonl."""

        def __init__(self):
            self._stack = None
            self._task = None

        def on_train_begin(self, args, state, control, **kwargs):
            self._stack = progress("training", state.max_steps or total_steps)
            self._task = self._stack.__enter__()
            self._task.advance(state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            self._task.advance(1)

        def on_log(self, args, state, control, logs=None, **kwargs):
            record = {"step": state.global_step, "epoch": state.epoch, "time": time.time(), **(logs or {})}
            with log_path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")

        def on_train_end(self, args, state, control, **kwargs):
            if self._stack is not None:
                self._stack.__exit__(None, None, None)

    return ProgressAndLog()


def _score_answer_positions_only_on_cpu() -> None:
    """Make trl's fused LM head project only answer positions on CPU, as it already does on GPUs.

    trl scores every position off Triton devices to spare XLA/Neuron a recompile per batch shape;
    eager CPU has no such cost, and with Gemma's 262k-token vocabulary projecting ~80 prompt
    positions instead of ~5 answer positions is about two thirds of a CPU training step.
    """
    import trl.trainer.utils as trl_utils

    original = trl_utils._use_triton
    if getattr(original, "__qabench__", False):
        return

    def compact_on_cpu(device) -> bool:
        return device.type == "cpu" or original(device)

    compact_on_cpu.__qabench__ = True
    trl_utils._use_triton = compact_on_cpu


def train(
    model: Any,
    fmt: PromptFormat,
    examples: Sequence[Example],
    spec: TrainSpec,
    checkpoint_dir: Path,
    log_path: Path,
    extra_callbacks: Callable[[int], list],
    use_bf16: bool,
) -> TrainResult:
    """Fine-tune `model` in place on prompt→answer pairs, resuming from the newest checkpoint."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    _score_answer_positions_only_on_cpu()
    columns = tokenize_for_training(examples, fmt, spec.max_seq_length)
    dataset = Dataset.from_dict(columns)
    steps = planned_steps(spec, len(examples))
    config = SFTConfig(
        output_dir=str(checkpoint_dir),
        max_steps=spec.max_steps,
        num_train_epochs=spec.epochs or 1,
        per_device_train_batch_size=spec.batch_size,
        gradient_accumulation_steps=spec.gradient_accumulation_steps,
        learning_rate=spec.learning_rate,
        lr_scheduler_type=spec.lr_scheduler,
        warmup_steps=spec.warmup_steps,
        weight_decay=spec.weight_decay,
        max_grad_norm=spec.max_grad_norm,
        optim={"adamw_8bit": "adamw_bnb_8bit"}.get(spec.optimizer, spec.optimizer),
        seed=spec.seed,
        data_seed=spec.seed,
        activation_checkpointing=spec.gradient_checkpointing,
        dataloader_pin_memory=torch.cuda.is_available(),
        save_strategy="steps",
        save_steps=spec.save_steps,
        save_total_limit=2,
        logging_steps=spec.logging_steps,
        report_to="none",
        disable_tqdm=True,
        bf16=use_bf16,
        completion_only_loss=True,
        max_length=spec.max_seq_length,
        # Batches of similar length waste little compute on padding.
        train_sampling_strategy="group_by_length",
        dataloader_num_workers=0,
    )
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=fmt.tokenizer,
        callbacks=[_progress_callback(steps, log_path), *extra_callbacks(steps)],
    )
    resume = any(checkpoint_dir.glob("checkpoint-*"))
    if resume:
        log(f"resuming training from {max(checkpoint_dir.glob('checkpoint-*'), key=lambda p: int(p.name.split('-')[1])).name}")
    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=resume or None)
    seconds = time.perf_counter() - started
    trainable, total = count_parameters(model)
    tokens = sum(len(ids) for ids in columns["input_ids"])
    return TrainResult(
        steps=trainer.state.global_step,
        seconds=seconds,
        train_tokens=tokens,
        final_loss=output.training_loss,
        trainable_parameters=trainable,
        total_parameters=total,
    )

"""Supervised fine-tuning with trl, the same for every method: the method only wraps the model.

Examples are tokenized here, with the prompt format inference uses, into `input_ids` plus a
`completion_mask`, so trl computes the loss on answer tokens only and never re-tokenizes.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from runner import distributed, preemption
from runner.console import log, progress
from runner.data import Example
from runner.icl import PromptFormat
from runner.manifest import TrainSpec
from runner.memory import peak_memory_bytes, reset_peak_memory


@dataclass(frozen=True)
class TrainResult:
    """What training measured, copied into metrics.json."""

    steps: int
    seconds: float
    """Wall time of this session's `trainer.train` (a resumed run counts only its own part)."""
    train_examples: int
    heldout_examples: int
    real_tokens: int
    """Non-padding tokens in the batches this session trained on."""
    padded_tokens: int
    """All token positions in those batches, padding included."""
    tokens_per_second: float | None
    """real_tokens / seconds."""
    final_loss: float | None
    """Mean training loss over this session's steps (answer tokens only)."""
    heldout_loss_before: float | None
    heldout_loss: float | None
    """Mean loss per answer token on the held-out slice after training."""
    heldout_perplexity: float | None
    """exp(heldout_loss): held-out perplexity, not exp of the training loss."""
    trainable_parameters: int
    total_parameters: int
    peak_memory_bytes: int
    """Peak during training (held-out evaluations included): GPU memory allocated on CUDA, the
    process's resident set on CPU (model weights included)."""

    @property
    def padding_fraction(self) -> float | None:
        """Share of batch positions that were padding."""
        return 1 - self.real_tokens / self.padded_tokens if self.padded_tokens else None

    def as_dict(self) -> dict[str, Any]:
        """Fields plus derived percentages, for JSON."""
        out = dict(self.__dict__)
        out["padding_fraction"] = self.padding_fraction
        out["trainable_percent"] = 100 * self.trainable_parameters / self.total_parameters if self.total_parameters else None
        return out


def split_heldout(examples: Sequence[Example], count: int, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, held-out): `count` examples drawn with a seeded RNG, never trained on."""
    count = min(count, len(examples) // 5)  # never hold out more than a fifth of the data (planned_steps agrees)
    chosen = set(random.Random(f"heldout:{seed}").sample(range(len(examples)), count))
    train = [e for i, e in enumerate(examples) if i not in chosen]
    heldout = [e for i, e in enumerate(examples) if i in chosen]
    return train, heldout


class TokenCounter:
    """Wraps the trainer's collator to count real and padded token positions per batch."""

    def __init__(self, collate: Callable):
        self._collate = collate
        self.real = 0
        self.padded = 0

    def __call__(self, features):
        batch = self._collate(features)
        mask = batch.get("attention_mask")
        ids = batch["input_ids"]
        self.padded += int(ids.numel())
        self.real += int(mask.sum()) if mask is not None else int(ids.numel())
        return batch


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
    """Optimizer steps the Trainer will run on `n_examples` (after the held-out slice is removed)."""
    if spec.max_steps > 0:
        return spec.max_steps
    trainable = n_examples - min(spec.heldout_examples, n_examples // 5)
    batches = math.ceil(trainable / spec.batch_size)
    # The Trainer's own arithmetic: optimizer steps per epoch rounded up, then times epochs, rounded up.
    return max(1, math.ceil(spec.epochs * math.ceil(batches / spec.gradient_accumulation_steps)))


def _parameter_count(parameter: Any) -> int:
    # A bitsandbytes 4-bit parameter packs two weights per byte; its quant_state keeps the shape.
    state = getattr(parameter, "quant_state", None)
    if state is not None and getattr(state, "shape", None) is not None:
        return math.prod(state.shape)
    return parameter.numel()


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts, quantized weights counted as the weights they encode."""
    trainable = sum(_parameter_count(p) for p in model.parameters() if p.requires_grad)
    total = sum(_parameter_count(p) for p in model.parameters())
    return trainable, total


CHECKPOINT_COMPLETE = "qabench_complete"


def _mark_checkpoints_complete():
    from transformers import TrainerCallback

    class MarkComplete(TrainerCallback):
        """Marks a checkpoint folder once the trainer has finished writing it.

        The trainer writes checkpoints file by file; a run killed mid-save leaves a folder that
        cannot be resumed from, so only marked folders count.
        """

        def on_save(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return  # rank 0 writes checkpoints; another rank could mark one still being written
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                (folder / CHECKPOINT_COMPLETE).write_text(str(state.global_step))

    return MarkComplete()


def complete_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """Fully written checkpoints, oldest first."""
    found = [p for p in checkpoint_dir.glob("checkpoint-*") if (p / CHECKPOINT_COMPLETE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def _progress_callback(total_steps: int, log_path: Path):
    from transformers import TrainerCallback

    class ProgressAndLog(TrainerCallback):
        """Advances the progress bar and appends every trainer log record to train_log.jsonl."""

        def __init__(self):
            self._stack = None
            self._task = None

        def on_train_begin(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            self._stack = progress("training", state.max_steps or total_steps)
            self._task = self._stack.__enter__()
            self._task.advance(state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            if self._task is not None:
                self._task.advance(1)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero:
                return
            logs = logs or {}
            record = {"step": state.global_step, "epoch": state.epoch, "time": time.time(), **logs}
            with log_path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
            shown = [f"{key} {logs[key]:.4f}" for key in ("loss", "eval_loss") if isinstance(logs.get(key), float)]
            if shown:
                log(f"step {state.global_step}: " + ", ".join(shown))

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
    device: str,
    use_bf16: bool,
) -> TrainResult:
    """Fine-tune `model` in place on prompt→answer pairs, resuming from the newest checkpoint."""
    import torch
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    _score_answer_positions_only_on_cpu()
    train_examples, heldout = split_heldout(examples, spec.heldout_examples, spec.seed)
    dataset = Dataset.from_dict(tokenize_for_training(train_examples, fmt, spec.max_seq_length))
    eval_dataset = Dataset.from_dict(tokenize_for_training(heldout, fmt, spec.max_seq_length)) if heldout else None
    steps = planned_steps(spec, len(examples))
    config = SFTConfig(
        output_dir=str(checkpoint_dir),
        max_steps=spec.max_steps,
        num_train_epochs=spec.epochs or 1,
        per_device_train_batch_size=spec.batch_size,
        per_device_eval_batch_size=spec.batch_size,
        gradient_accumulation_steps=spec.gradient_accumulation_steps,
        learning_rate=spec.learning_rate,
        lr_scheduler_type=spec.lr_scheduler,
        warmup_steps=spec.warmup_steps,
        weight_decay=spec.weight_decay,
        max_grad_norm=spec.max_grad_norm,
        optim=OPTIMIZERS[spec.optimizer],
        seed=spec.seed,
        data_seed=spec.seed,
        activation_checkpointing=spec.gradient_checkpointing,
        dataloader_pin_memory=torch.cuda.is_available(),
        save_strategy="steps",
        save_steps=spec.save_steps,
        save_total_limit=2,
        eval_strategy="steps" if eval_dataset is not None else "no",
        eval_steps=spec.eval_steps or spec.save_steps,
        logging_steps=spec.logging_steps,
        report_to="none",
        disable_tqdm=True,
        bf16=use_bf16,
        completion_only_loss=True,
        max_length=spec.max_seq_length,
        # Batches of similar length waste little compute on padding (measured: padding_fraction).
        train_sampling_strategy="group_by_length",
        dataloader_num_workers=0,
        # Without GPUs the trainer only goes data parallel when told to use the CPU with gloo.
        **({"use_cpu": True, "ddp_backend": "gloo"} if device == "cpu" and distributed.world_size() > 1 else {}),
    )
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        processing_class=fmt.tokenizer,
        callbacks=[
            _progress_callback(steps, log_path),
            preemption.trainer_callback(),
            _mark_checkpoints_complete(),
            *extra_callbacks(steps),
        ],
    )
    # Our own lines (and train_log.jsonl) replace the trainer's printed dicts.
    trainer.remove_callback(PrinterCallback)
    counter = TokenCounter(trainer.data_collator)
    trainer.data_collator = counter
    checkpoints = complete_checkpoints(checkpoint_dir)
    for partial in set(checkpoint_dir.glob("checkpoint-*")) - set(checkpoints) if distributed.is_main() else ():
        shutil.rmtree(partial)  # cut off mid-write by a kill; the trainer would choke on it
    if checkpoints:
        log(f"resuming training from {checkpoints[-1].name}")
    reset_peak_memory(device)
    before = _heldout_loss(trainer) if eval_dataset is not None and not checkpoints else None
    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=str(checkpoints[-1]) if checkpoints else None)
    seconds = time.perf_counter() - started
    preemption.stop_if_requested(f"checkpoint-{trainer.state.global_step}")
    # Counted before the final evaluation, whose batches go through the same collator.
    real, padded = distributed.total([counter.real, counter.padded])
    after = _heldout_loss(trainer) if eval_dataset is not None else None
    trainable, total = count_parameters(model)
    return TrainResult(
        steps=trainer.state.global_step,
        seconds=seconds,
        train_examples=len(train_examples),
        heldout_examples=len(heldout),
        real_tokens=real,
        padded_tokens=padded,
        tokens_per_second=real / seconds if seconds else None,
        final_loss=output.training_loss,
        heldout_loss_before=before,
        heldout_loss=after,
        heldout_perplexity=math.exp(after) if after is not None else None,
        trainable_parameters=trainable,
        total_parameters=total,
        peak_memory_bytes=peak_memory_bytes(device),
    )


def _heldout_loss(trainer: Any) -> float:
    return float(trainer.evaluate()["eval_loss"])


# Manifest optimizer names → transformers `optim` values (8-bit and paged variants via bitsandbytes).
OPTIMIZERS = {
    "adamw_torch": "adamw_torch",
    "adamw_torch_fused": "adamw_torch_fused",
    "adamw_8bit": "adamw_bnb_8bit",
    "paged_adamw_8bit": "paged_adamw_8bit",
    "sgd": "sgd",
}

"""Training that survives running out of GPU memory: micro-batches too large are run in chunks.

trl scales every micro-batch's loss as (summed loss over its answer tokens) / `num_items_in_batch`,
the answer tokens of the whole accumulation window, and backpropagates it; the window's gradients
add up before the optimizer step. So a micro-batch of 8 rows run as two chunks of 4, each scaled
by the same `num_items_in_batch`, yields the same gradient (up to float summation order): halving
the rows per forward pass and doubling the passes per step keeps the effective batch, the data
order, the learning-rate schedule and the training's identity. The smaller size is kept for the
rest of the training and saved with every checkpoint, so a resumed run computes what the
uninterrupted one did. Micro-batch 1 that still does not fit is a user error with advice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from runner.console import log
from runner.errors import Problem, UserError

CHECKPOINT_MICRO_BATCH = "qabench_micro_batch.json"
"""The micro-batch size and the back-offs so far, saved with each checkpoint."""


class StillOutOfMemory(Exception):
    """A training micro-batch of one row ran out of memory: there is nothing left to split."""

    def __init__(self, step: int, tokens: int):
        self.step, self.tokens = step, tokens
        super().__init__(f"out of memory at step {step} even one example at a time (the micro-batch's longest has {tokens} tokens)")


def release_memory() -> None:
    """Return the failed pass's cached blocks to the device before trying again."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _rows(batch: dict[str, Any]) -> int:
    return int(batch["input_ids"].shape[0])


def _longest(batch: dict[str, Any]) -> int:
    mask = batch.get("attention_mask")
    return int(mask.sum(dim=1).max()) if mask is not None else int(batch["input_ids"].shape[1])


def split_rows(batch: dict[str, Any], size: int) -> list[dict[str, Any]]:
    """The batch as consecutive chunks of at most `size` rows, each cut to its own longest row.

    trl's collator pads on the right, so the columns after a chunk's longest row are padding in
    every row of it; a causal model's outputs at real tokens never depend on later positions, and
    dropping them saves the memory the split is for.
    """
    import torch

    rows = _rows(batch)
    chunks = []
    for start in range(0, rows, size):
        chunk = {k: v[start : start + size] if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == rows else v for k, v in batch.items()}
        mask = chunk.get("attention_mask")
        if torch.is_tensor(mask) and mask.dim() == 2:
            width, length = mask.shape[1], int(mask.sum(dim=1).max())
            if length < width and not bool(mask[:, length:].any()):
                chunk = {k: v[:, :length] if torch.is_tensor(v) and v.dim() >= 2 and v.shape[1] == width else v for k, v in chunk.items()}
        chunks.append(chunk)
    return chunks


def answer_tokens(batch: dict[str, Any]) -> int:
    """Positions the loss is computed on: labels other than -100, shifted as a causal LM's loss is."""
    return int((batch["labels"][..., 1:] != -100).sum())


def _metric_sums(trainer: Any) -> tuple[dict[str, int], list, int]:
    """Where trl's sums towards the next log record stand: lengths of its per-micro-batch lists
    (only ever appended to until a log record clears them), its token count and count list."""
    metrics = trainer._metrics["train"]
    return {key: len(values) for key, values in metrics.items()}, list(metrics.get("num_tokens", [])), trainer._total_train_tokens


def _restore_metric_sums(trainer: Any, saved: tuple[dict[str, int], list, int]) -> None:
    lengths, num_tokens, tokens = saved
    metrics = trainer._metrics["train"]
    for key in [k for k in metrics if k not in lengths]:
        del metrics[key]
    for key, length in lengths.items():
        del metrics[key][length:]
    if "num_tokens" in lengths:
        metrics["num_tokens"][:] = num_tokens
    trainer._total_train_tokens = tokens


def _merge_chunk_metrics(trainer: Any, lengths_before: dict[str, int], weights: list[int]) -> None:
    """Turn the per-chunk entries trl appended (entropy, token accuracy) into one per micro-batch.

    trl averages its per-micro-batch ratios when it logs; a chunked micro-batch's ratio is its
    chunks' ratios weighted by their answer tokens, so the log reads as if the micro-batch had fit.
    """
    total = sum(weights)
    for key, values in trainer._metrics["train"].items():
        added = values[lengths_before.get(key, 0) :]
        if key == "num_tokens" or len(added) != len(weights):
            continue
        merged = sum(w * v for w, v in zip(weights, added)) / total if total else sum(added) / len(added)
        del values[lengths_before.get(key, 0) :]
        values.append(merged)


class MicroBatches:
    """Rows per forward/backward pass, halved each time a training micro-batch runs out of memory.

    The trainer's own loop is untouched: it still hands over `batch_size` rows per micro-batch and
    `gradient_accumulation_steps` micro-batches per optimizer step; `training_step` runs each
    micro-batch in chunks of `size` rows.

    An out-of-memory error can strike in the backward pass, after part of the micro-batch's
    gradient was added to `.grad`. The micro-batches of the current accumulation window are kept
    (token ids: a few KB), so after a failure the trainable gradients are cleared and the whole
    window is redone in chunks: the gradient is then exactly the window's again.
    """

    def __init__(self, batch_size: int, can_split: bool):
        self.size = batch_size
        self.backoffs: list[dict[str, int]] = []
        """One record per back-off: the optimizer step (as train_log.jsonl counts) and the new size."""
        self.can_split = can_split
        """False in data-parallel training: every rank must run the same collectives (gradient
        all-reduce, trl's metric gathers) in the same order, and only the failing rank knows of
        its failure, so an out-of-memory error there is fatal (with advice) instead."""
        self._window: list[dict[str, Any]] = []
        self._window_step: int | None = None

    def state(self) -> dict[str, Any]:
        """What a checkpoint records."""
        return {"micro_batch": self.size, "oom_backoffs": self.backoffs}

    def restore(self, checkpoint: Path) -> None:
        """Continue with the size (and back-off record) a checkpoint was saved with."""
        path = checkpoint / CHECKPOINT_MICRO_BATCH
        if not path.is_file():
            return  # saved before checkpoints recorded it: the manifest's batch size
        saved = json.loads(path.read_text())
        self.size, self.backoffs = int(saved["micro_batch"]), [dict(b) for b in saved["oom_backoffs"]]
        if self.backoffs:
            log(f"resuming with {self.size} rows per forward pass, as the training ran out of memory before")

    def training_step(self, trainer: Any, model: Any, inputs: dict[str, Any], num_items_in_batch: Any, forward_backward: Callable) -> Any:
        """Forward and backward over `inputs` in chunks that fit; the micro-batch's (detached) loss.

        `forward_backward(model, chunk)` is the trainer's own training step for the chunk, scaled by
        the window's `num_items_in_batch`.
        """
        import torch

        step = trainer.state.global_step
        if step != self._window_step:  # a new optimizer step: the previous window's gradients were applied
            self._window, self._window_step = [], step
        # Without a window token count each chunk's loss would be its own mean, not its share of the sum.
        splittable = self.can_split and num_items_in_batch is not None
        redo = False
        while True:
            sums = _metric_sums(trainer)
            try:
                if redo:
                    for earlier in self._window:
                        self._run(trainer, model, earlier, forward_backward, splittable)
                    # Their loss and metrics were counted when they first ran; only the gradients are redone.
                    _restore_metric_sums(trainer, sums)
                loss = self._run(trainer, model, inputs, forward_backward, splittable)
                break
            except torch.OutOfMemoryError:
                if not splittable:
                    raise
            # Outside the handler: the exception and its frames, which hold the failed pass's
            # activations, are released before memory is returned to the device.
            _restore_metric_sums(trainer, sums)
            for parameter in model.parameters():
                parameter.grad = None  # a failed backward may have added part of its gradient
            release_memory()
            tried = min(self.size, max(_rows(batch) for batch in [*self._window, inputs]))
            if tried == 1:
                raise StillOutOfMemory(step + 1, _longest(inputs))
            self.size = tried // 2
            self.backoffs.append({"step": step + 1, "micro_batch": self.size})
            log(
                f"out of memory at step {step + 1} with {tried} rows per forward pass; continuing with {self.size} "
                f"(twice the passes per optimizer step: effective batch and data order unchanged)"
            )
            redo = True
        self._window.append(inputs)
        return loss

    def _run(self, trainer: Any, model: Any, inputs: dict[str, Any], forward_backward: Callable, splittable: bool) -> Any:
        if not splittable or _rows(inputs) <= self.size:
            return forward_backward(model, inputs)
        chunks = split_rows(inputs, self.size)
        lengths = {key: len(values) for key, values in trainer._metrics["train"].items()}
        loss = None
        for chunk in chunks:
            part = forward_backward(model, chunk)
            loss = part if loss is None else loss + part
        _merge_chunk_metrics(trainer, lengths, [answer_tokens(chunk) for chunk in chunks])
        return loss


def out_of_memory_error(what: str, source: Path | None, spec: Any, data_parallel: bool) -> UserError:
    """The exit-2 error for training that does not fit even one example at a time, with what to change."""
    changes = []
    if not spec.gradient_checkpointing:
        changes.append("train.gradient_checkpointing: true (recompute activations in the backward pass)")
    if spec.optimizer not in ("adamw_8bit", "paged_adamw_8bit", "sgd"):
        changes.append("train.optimizer: adamw_8bit or paged_adamw_8bit (2 bytes of state per trainable weight instead of 8)")
    changes.append(f"a shorter train.max_seq_length (now {spec.max_seq_length})")
    changes.append("a method that trains fewer weights (method.kind: lora or qlora instead of full; a smaller rank)")
    if data_parallel:
        # Data-parallel ranks cannot back off alone (see MicroBatches.can_split).
        changes.append("a smaller train.batch_size with train.gradient_accumulation_steps raised by the same factor")
    manifest = str(source) if source is not None else "MANIFEST"
    message = (
        f"{what}: the model, its gradients and optimizer state do not fit this device. Change: "
        + "; ".join(changes)
        + f". `python -m runner plan {manifest} --gpu-memory GB` estimates what fits."
    )
    return UserError([Problem(message, file=str(source) if source is not None else None, field="train")])

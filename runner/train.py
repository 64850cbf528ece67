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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from runner import distributed, preemption
from runner.atomic import write_atomic
from runner.console import log, progress
from runner.data import Example
from runner.icl import PromptFormat
from runner.manifest import TrainSpec
from runner.memory import peak_memory_bytes, reset_peak_memory
from runner.train_memory import CHECKPOINT_MICRO_BATCH, MicroBatches, StillOutOfMemory, out_of_memory_error


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
    optimizer: str
    """The optimizer that ran: `train.optimizer`, or the equivalent that stood in for it on this
    device (paged_adamw_8bit → adamw_8bit on CPU, where bitsandbytes has no paged memory)."""
    micro_batch: int
    """Rows per forward/backward pass when training ended: `train.batch_size` unless running out of
    GPU memory halved it (the effective batch is unchanged either way)."""
    oom_backoffs: tuple[dict[str, int], ...]
    """Each out-of-memory back-off of the training, resumed attempts' included: `step` (the
    optimizer step, as train_log.jsonl counts it) and the `micro_batch` it continued with."""

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
CHECKPOINT_LOG = "qabench_train_log.jsonl"
"""train_log.jsonl as it stood when the checkpoint was saved: exactly the records of its steps."""
CHECKPOINT_LOG_STATE = "qabench_log_state.json"
"""What the trainer accumulated towards its next log record when the checkpoint was saved."""


def _log_accumulators(trainer: Any) -> dict[str, Any]:
    """The trainer's (and trl's) sums since the last log record, which its checkpoints leave out.

    A checkpoint between two log records (`save_steps` not a multiple of `logging_steps`, a
    checkpoint on SIGTERM) would otherwise resume with empty sums, and the next record's mean
    loss, token accuracy and running token count would cover only the resumed steps.
    """
    # Each rank sums its own losses; the next record averages the ranks' sums. Gathering is a
    # collective: every rank calls this.
    return {
        "tr_loss_by_rank": distributed.gather(trainer._tr_loss.item()),  # float32 → Python float → float32 is exact
        "last_logged": trainer._globalstep_last_logged,
        "total_train_tokens": trainer._total_train_tokens,
        "metrics": {key: list(values) for key, values in trainer._metrics["train"].items()},
    }


def _restore_log_accumulators(checkpoint: Path, trainer: Any):
    """A TrainerCallback putting back, as training begins, the sums saved with `checkpoint`."""
    from transformers import TrainerCallback

    class RestoreSums(TrainerCallback):
        # on_train_begin runs after the trainer zeroed its sums and before the first step.
        def on_train_begin(self, args, state, control, **kwargs):
            path = checkpoint / CHECKPOINT_LOG_STATE
            if not path.is_file():
                return  # saved before the sums travelled with checkpoints
            saved = json.loads(path.read_text())
            # Older checkpoints hold "tr_loss", rank 0's sum alone: right for one process, not for several.
            by_rank = saved["tr_loss_by_rank"] if "tr_loss_by_rank" in saved else [saved["tr_loss"]]
            if len(by_rank) == distributed.world_size():
                trainer._tr_loss.fill_(by_rank[distributed.rank()])
            trainer._globalstep_last_logged = saved["last_logged"]
            trainer._total_train_tokens = saved["total_train_tokens"]
            trainer._metrics["train"].clear()
            trainer._metrics["train"].update(saved["metrics"])

    return RestoreSums()


def _mark_checkpoints_complete(train_log: TrainLog, accumulators: Callable[[], dict[str, Any]], micro_batches: MicroBatches):
    from transformers import TrainerCallback

    class MarkComplete(TrainerCallback):
        """Marks a checkpoint folder once the trainer has finished writing it, with the log so far.

        The trainer writes checkpoints file by file; a run killed mid-save leaves a folder that
        cannot be resumed from, so only marked folders count. The log copy (and the sums towards
        the next record) go in before the marker: a resumed run restarts its log from it, so
        records a killed attempt wrote after this checkpoint never survive beside the resumed
        run's own records of the same steps. So does the micro-batch size: a resumed run splits
        its batches as the uninterrupted one did after an out-of-memory back-off.
        """

        def on_save(self, args, state, control, **kwargs):
            sums = accumulators()  # on every rank: it gathers the ranks' loss sums
            if not state.is_world_process_zero:
                return  # rank 0 writes checkpoints; another rank could mark one still being written
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                write_atomic(folder / CHECKPOINT_LOG, train_log.snapshot())
                write_atomic(folder / CHECKPOINT_LOG_STATE, json.dumps(sums).encode())
                write_atomic(folder / CHECKPOINT_MICRO_BATCH, json.dumps(micro_batches.state()).encode())
                (folder / CHECKPOINT_COMPLETE).write_text(str(state.global_step))

    return MarkComplete()


def complete_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """Fully written checkpoints, oldest first."""
    found = [p for p in checkpoint_dir.glob("checkpoint-*") if (p / CHECKPOINT_COMPLETE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def reached_last_step(checkpoint: Path) -> bool:
    """Whether a checkpoint was saved after the training's last step (the trainer always saves one).

    The trainer's loop takes a step before it checks `max_steps`, so resuming from such a
    checkpoint would train one step more than planned; a run cut off after its last step (in the
    final held-out evaluation, publishing the adapter) resumes from the checkpoint before instead.
    """
    state = checkpoint / "trainer_state.json"
    if not state.is_file():
        return False
    saved = json.loads(state.read_text())
    return saved.get("max_steps", 0) > 0 and saved.get("global_step", 0) >= saved["max_steps"]


class TrainLog:
    """train_log.jsonl of this training session: restored from the resumed checkpoint, then
    appended record by record, with every record also kept in memory.

    Checkpoints copy the records in memory, not the file: only the lease keeps a second process
    from training (and appending) at once, and whatever such a process wrote never reaches this
    session's checkpoints. The file is replaced, never truncated in place.
    """

    def __init__(self, path: Path):
        self.path = path
        self._lines: list[bytes] = []

    def restore(self, checkpoint: Path | None) -> list[dict]:
        """Hold exactly the records of the steps `checkpoint` covers (none without one) and return
        them: what an earlier attempt logged after its newest checkpoint is dropped."""
        if checkpoint is None:
            data = b""
        elif (checkpoint / CHECKPOINT_LOG).is_file():
            data = (checkpoint / CHECKPOINT_LOG).read_bytes()
        else:  # a checkpoint saved before the log travelled with it: keep the records of its steps
            step = int(checkpoint.name.split("-")[1])
            lines = self.path.read_bytes().splitlines(keepends=True) if self.path.is_file() else []
            data = b"".join(line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step)
        write_atomic(self.path, data)
        self._lines = data.splitlines(keepends=True)
        return [json.loads(line) for line in self._lines if line.strip()]

    def append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record) + "\n").encode()
        self._lines.append(line)
        # Opened by name each time: publishing rewrites the file whole (write_atomic replaces it),
        # so a handle kept open would write into the replaced file.
        with self.path.open("ab") as handle:
            handle.write(line)

    def snapshot(self) -> bytes:
        """The records so far, as the file holds them."""
        return b"".join(self._lines)


# Trainer log fields that are clock readings (`eval_runtime`, `eval_samples_per_second`,
# `eval_model_preparation_time`, ...): left out of train_log.jsonl, so the log of a resumed
# training equals an uninterrupted one's byte for byte.
_TIMING_SUFFIXES = ("_runtime", "_per_second", "_time")


def _log_record(step: int, epoch: float | None, logs: dict[str, Any]) -> dict[str, Any] | None:
    """The train_log.jsonl record of one trainer log call, or None for the trainer's closing summary
    (`train_runtime`, `train_loss` over this session only: a resumed run's would differ)."""
    if "train_runtime" in logs:
        return None
    return {"step": step, "epoch": epoch, **{k: v for k, v in logs.items() if not k.endswith(_TIMING_SUFFIXES)}}


def _progress_callback(total_steps: int, train_log: TrainLog):
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
            record = _log_record(state.global_step, state.epoch, logs)
            if record is not None:
                train_log.append(record)
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


@contextmanager
def _global_randomness_kept(device: str):
    """Restore python's, numpy's and torch's global generators when the block ends.

    The held-out evaluation before training runs only when no checkpoint exists; each DataLoader
    it iterates draws a seed from torch's generator. Run bare, it would shift the stream that
    orders the first epoch and drops out activations in a fresh run but not in a resumed one.
    """
    import numpy as np
    import torch

    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = [torch.cuda.current_device()] if device == "cuda" and torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def _epoch_seeded_sampler(sampler: Any, seed: int, epoch: Callable[[], float | None]):
    """`sampler` (transformers' LengthGroupedSampler) drawing each epoch's order from its own
    generator seeded with (seed, epoch), never from torch's global one.

    The trainer builds the resumed epoch's order before it restores the checkpoint's RNG state, so
    an order drawn from the global generator depends on everything that ran since the trainer was
    built: a resumed run would see a different order for the rest of its epoch. The epoch comes
    from the trainer's state when iteration starts: whole at an epoch's start, and its floor when
    a run resumes mid-epoch.
    """
    import torch
    from torch.utils.data import Sampler

    class EpochSeeded(Sampler):
        def __len__(self) -> int:
            return len(sampler)

        def __iter__(self):
            current = math.floor(epoch() or 0)
            # A prime stride: distinct (seed, epoch) pairs get distinct seeds below a million epochs.
            sampler.generator = torch.Generator().manual_seed(seed * 1_000_003 + current)
            return iter(sampler)

    return EpochSeeded()


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
    source: Path | None = None,
) -> TrainResult:
    """Fine-tune `model` in place on prompt→answer pairs, resuming from the newest checkpoint.

    `use_bf16`: autocast to bfloat16 (weights stay in their own dtype); `source`: the manifest
    file, named in the advice when training does not fit the device.
    """
    import torch
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    _score_answer_positions_only_on_cpu()
    train_examples, heldout = split_heldout(examples, spec.heldout_examples, spec.seed)
    dataset = Dataset.from_dict(tokenize_for_training(train_examples, fmt, spec.max_seq_length))
    eval_dataset = Dataset.from_dict(tokenize_for_training(heldout, fmt, spec.max_seq_length)) if heldout else None
    steps = planned_steps(spec, len(examples))
    optimizer = optimizer_on(spec.optimizer, device)
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
        optim=OPTIMIZERS[optimizer],
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
    from transformers.trainer_pt_utils import LengthGroupedSampler

    micro_batches = MicroBatches(spec.batch_size, can_split=distributed.world_size() == 1)

    class Trainer(SFTTrainer):
        def _get_train_sampler(self, train_dataset=None):
            sampler = super()._get_train_sampler(train_dataset)
            if isinstance(sampler, LengthGroupedSampler):
                return _epoch_seeded_sampler(sampler, spec.seed, lambda: self.state.epoch)
            return sampler

        def training_step(self, model, inputs, num_items_in_batch=None):
            def forward_backward(model, chunk):
                return super(Trainer, self).training_step(model, chunk, num_items_in_batch)

            return micro_batches.training_step(self, model, inputs, num_items_in_batch, forward_backward)

    train_log = TrainLog(log_path)
    trainer = Trainer(
        model=model,
        args=config,
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        processing_class=fmt.tokenizer,
        callbacks=[
            _progress_callback(steps, train_log),
            preemption.trainer_callback(),
            _mark_checkpoints_complete(train_log, lambda: _log_accumulators(trainer), micro_batches),
            *extra_callbacks(steps),
        ],
    )
    # Our own lines (and train_log.jsonl) replace the trainer's printed dicts.
    trainer.remove_callback(PrinterCallback)
    counter = TokenCounter(trainer.data_collator)
    trainer.data_collator = counter
    checkpoints = complete_checkpoints(checkpoint_dir)
    finished = [c for c in checkpoints if reached_last_step(c)]
    checkpoints = [c for c in checkpoints if c not in finished]
    # Partial ones were cut off mid-write by a kill (the trainer would choke on them); finished
    # ones are redone from the checkpoint before, and the trainer would rewrite them in place.
    for unused in set(checkpoint_dir.glob("checkpoint-*")) - set(checkpoints) if distributed.is_main() else ():
        shutil.rmtree(unused)
    resume = checkpoints[-1] if checkpoints else None
    if finished:
        log(f"{finished[-1].name} is the last step's; redoing the steps after {resume.name if resume else 'the start'} to resume exactly")
    if resume is not None:
        log(f"resuming training from {resume.name}")
        trainer.add_callback(_restore_log_accumulators(resume, trainer))
        micro_batches.restore(resume)
    logged = train_log.restore(resume) if distributed.is_main() else []
    reset_peak_memory(device)
    before = None
    fits = _out_of_memory_is_fatal(spec, source)
    if eval_dataset is not None and resume is None:
        with _global_randomness_kept(device):
            before = fits(lambda: _heldout_loss(trainer), "out of memory in the held-out evaluation before training")
        if distributed.world_size() > 1:
            # evaluate() registered the bare model with accelerate as prepared (for evaluation, so
            # not wrapped in DistributedDataParallel), and train() would then skip wrapping it:
            # every rank would train on its own shard without averaging gradients.
            trainer.accelerator._models.clear()
            if hasattr(trainer.model, "_is_accelerate_prepared"):
                del trainer.model._is_accelerate_prepared
    elif eval_dataset is not None:
        # The held-out loss before training was logged at step 0 by the attempt that started it.
        before = next((r["eval_loss"] for r in logged if r.get("step") == 0 and "eval_loss" in r), None)
    started = time.perf_counter()
    output = fits(
        lambda: trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None),
        lambda: f"out of memory at step {trainer.state.global_step + 1} (optimizer step or held-out evaluation)",
    )
    seconds = time.perf_counter() - started
    if trainer.state.global_step < trainer.state.max_steps:
        # Stopped early on SIGTERM. Once the last step is done, finishing (a held-out evaluation
        # and the adapter) costs less than redoing steps from the previous checkpoint after a retry.
        preemption.stop_if_requested(f"checkpoint-{trainer.state.global_step}")
    # Counted before the final evaluation, whose batches go through the same collator.
    real, padded = distributed.total([counter.real, counter.padded])
    after = fits(lambda: _heldout_loss(trainer), "out of memory in the held-out evaluation after training") if eval_dataset is not None else None
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
        optimizer=optimizer,
        micro_batch=micro_batches.size,
        oom_backoffs=tuple(micro_batches.backoffs),
    )


def _heldout_loss(trainer: Any) -> float:
    return float(trainer.evaluate()["eval_loss"])


def _out_of_memory_is_fatal(spec: TrainSpec, source: Path | None) -> Callable[[Callable[[], Any], str | Callable[[], str]], Any]:
    """`fits(work, what)`: work's result, or exit 2 with advice when it runs out of device memory.

    Training steps back off on their own (runner/train_memory.py); what reaches here is a single
    example that does not fit, an optimizer step (its state is allocated at the first one), a
    held-out evaluation, or any out-of-memory error in data-parallel training.
    """
    import torch

    def fits(work: Callable[[], Any], what: str | Callable[[], str]) -> Any:
        try:
            return work()
        except StillOutOfMemory as exc:
            message = str(exc)
        except torch.OutOfMemoryError:
            message = what() if callable(what) else what
        # Raised outside the handler, so no traceback chain keeps the failed pass's tensors alive.
        raise out_of_memory_error(message, source, spec, data_parallel=distributed.world_size() > 1)

    return fits


# Manifest optimizer names → transformers `optim` values (8-bit and paged variants via bitsandbytes).
# Each runs a step on CPU as well (tests/test_training_memory.py); only paging needs CUDA.
OPTIMIZERS = {
    "adamw_torch": "adamw_torch",
    "adamw_torch_fused": "adamw_torch_fused",
    "adamw_8bit": "adamw_bnb_8bit",
    "paged_adamw_8bit": "paged_adamw_8bit",
    "sgd": "sgd",
}


def optimizer_on(name: str, device: str) -> str:
    """The manifest optimizer that runs on `device`: `name`, or its equivalent where it has no path there.

    Paging moves optimizer state between GPU and host memory under pressure (CUDA unified memory);
    on CPU there is nothing to page to, and bitsandbytes falls back to its plain 8-bit AdamW, the
    same update. That fallback is made here, logged and recorded, instead of hidden in a warning.
    """
    if name == "paged_adamw_8bit" and device != "cuda":
        log(f"train.optimizer: paged_adamw_8bit pages state out of GPU memory; on {device} adamw_8bit runs instead (the same update)")
        return "adamw_8bit"
    return name

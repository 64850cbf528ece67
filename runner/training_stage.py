"""The training stage: train once under the training's digest, or reuse what storage already holds.

Write order under `trainings/<digest>/`: training.yaml and provenance.json, then checkpoints and
train_log.jsonl as the trainer saves them, the adapter folder (published whole), `_SUCCESS` last.
A training whose `_SUCCESS` exists is never redone by any manifest on any host; one that another
process holds the lease on is waited for (or left for later) instead of trained twice.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from runner import distributed
from runner.console import log
from runner.context import DraftSource, TrainingStage
from runner.errors import UserError
from runner.lease import Holder, Lease, expiry_seconds, try_acquire
from runner.paths import TRAIN_LOG_FILE
from runner.storage import Store

TRAIN_SUMMARY = "qabench_train.json"
"""What training measured, stored inside the adapter folder and copied into each evaluation's metrics."""


class TrainingBusy(Exception):
    """Another live process holds the lease on a training this run needs."""

    def __init__(self, stage: TrainingStage, holder: Holder | None):
        self.stage, self.holder = stage, holder
        by = holder.describe() if holder is not None else "another process"
        super().__init__(f"training {stage.keys.digest} is being trained by {by}")


def stored_summary(stage: TrainingStage, store: Store) -> dict[str, Any]:
    """The training summary of a finished training."""
    return json.loads(store.read_bytes(f"{stage.keys.adapter}/{TRAIN_SUMMARY}"))


def _try_to_hold(stage: TrainingStage, store: Store) -> tuple[bool, bool, Lease | Holder | None]:
    """(finished, held by this process group, the lease or live holder).

    In data-parallel runs rank 0 alone talks to the lease and every rank learns its decision.
    """
    finished = store.exists(stage.keys.success)
    outcome = None if finished or not distributed.is_main() else try_acquire(store, stage.keys)
    held = isinstance(outcome, Lease)
    if distributed.world_size() > 1:
        held_count, finished_count = distributed.total([int(held), int(finished)])
        held, finished = held_count > 0, finished_count > 0
    return finished, held, outcome


def ensure_trained(stage: TrainingStage, store: Store, wait: bool = True) -> dict[str, Any]:
    """The stage's training summary: from storage when finished, else after training it here.

    When another live process holds the lease: wait for it (`wait`), polling storage, or raise
    TrainingBusy so the caller can do other work first. A holder that died stops renewing its
    lease and this process takes over from the newest stored checkpoint once it expires.
    """
    poll = min(30.0, expiry_seconds() / 4)
    announced = False
    while True:
        finished, held, outcome = _try_to_hold(stage, store)
        if finished:
            log(f"training {stage.keys.digest} already done; reusing its weights")
            return stored_summary(stage, store)
        if held:
            lease = outcome if isinstance(outcome, Lease) else None
            try:
                return _train(stage, store, lease)
            finally:
                if lease is not None:
                    lease.release()
        holder = outcome if isinstance(outcome, Holder) else None
        if not wait:
            raise TrainingBusy(stage, holder)
        if not announced:
            log(f"{TrainingBusy(stage, holder)}; waiting for it")
            announced = True
        time.sleep(poll)


def _lease_guard(lease: Lease | None):
    """A TrainerCallback that stops training at the next step once the lease is lost."""
    from transformers import TrainerCallback

    class CheckLease(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if lease is not None:
                lease.check()

    return CheckLease()


def _train(stage: TrainingStage, store: Store, lease: Lease | None) -> dict[str, Any]:
    import transformers

    from runner import provenance
    from runner.checkpoints import checkpoint_publisher, publish_log, publish_tensorboard, restore_tensorboard, restore_training, tensorboard_callback
    from runner.icl import PromptFormat
    from runner.prompt_style import requested_style
    from runner.methods import MethodContext
    from runner.models import load_model
    from runner.train import planned_steps, train

    manifest, keys, method = stage.loaded.manifest, stage.keys, stage.method
    log(f"training {keys.digest} ({manifest.method.kind} on {stage.model.source}, {len(stage.examples)} examples) → {store.uri}/{keys.prefix}")
    if distributed.is_main():
        record = {"request": stage.request, "model": stage.model.as_dict(), "data": stage.data_hashes}
        store.write_bytes(keys.spec, yaml.safe_dump(record, sort_keys=False).encode())
    base = load_model(stage.loaded)
    fmt = PromptFormat(base.tokenizer, manifest.icl, requested_style(manifest))
    steps = planned_steps(manifest.train, len(stage.examples))
    context = MethodContext(total_steps=steps, model_type=base.model.config.model_type, tokenizer=base.tokenizer, device=base.device)
    # Adapter initialisation draws from torch's global generator; seeding it makes it repeatable.
    transformers.set_seed(manifest.train.seed)
    # Read before `apply`: full fine-tuning turns bfloat16 weights into float32 master weights.
    use_bf16 = autocast_bf16(base.model.dtype, base.device)
    model = method.apply(base.model, manifest.method, context)
    checkpoint_dir, log_path = store.local_dir(keys.checkpoints), store.local_dir(keys.prefix) / TRAIN_LOG_FILE
    if distributed.is_main():
        restore_training(store, keys, checkpoint_dir, log_path)  # a fresh host continues from storage
        facts = provenance.collect(base.device, base.identity.as_dict(), stage.data_hashes, keys.digest)
        facts["train_sample"] = stage.train_sample
        facts["overrides"] = [str(override) for override in stage.loaded.overrides]  # of the manifest that trained it
        store.write_bytes(keys.provenance, json.dumps(facts, indent=2).encode())
    tensorboard = restore_tensorboard(store, keys) if "tensorboard" in manifest.train.report_to and distributed.is_main() else None
    trackers = [tensorboard_callback(tensorboard)] if tensorboard is not None else []
    distributed.barrier()
    # The publisher goes last: the method's callbacks may still be writing into the checkpoint.
    publisher = checkpoint_publisher(store, keys, checkpoint_dir, log_path, tensorboard)
    result = train(
        model,
        fmt,
        list(stage.examples),
        manifest.train,
        checkpoint_dir=checkpoint_dir,
        log_path=log_path,
        extra_callbacks=lambda steps: [*method.trainer_callbacks(model, manifest.method, steps), _lease_guard(lease), *trackers, publisher],
        device=base.device,
        use_bf16=use_bf16,
        source=stage.loaded.path,
    )
    summary = result.as_dict()
    if distributed.is_main():
        with tempfile.TemporaryDirectory() as staging:
            _sort_config_sets(model)
            method.save_trained(model, Path(staging))
            summary["adapter_bytes"] = sum(f.stat().st_size for f in Path(staging).rglob("*") if f.is_file())
            (Path(staging) / TRAIN_SUMMARY).write_text(json.dumps(summary, indent=2))
            store.put_dir(keys.adapter, Path(staging))
        publish_log(store, keys, log_path)
        publish_tensorboard(store, keys, tensorboard)
        store.write_bytes(keys.success, json.dumps({"completed_at": time.time(), "steps": result.steps}).encode())
    distributed.barrier()
    log(f"trained {result.steps} steps in {result.seconds:.0f}s, final loss {result.final_loss:.4f}")
    return summary


def autocast_bf16(base_dtype: Any, device: str) -> bool:
    """Whether training autocasts to bfloat16: on a GPU, for a base model loaded in bfloat16.

    Float32 adapters (peft's, QLoRA's aside: trl casts those to bfloat16) and full fine-tuning's
    float32 master weights then compute in bfloat16 and update in float32. On CPU nothing is
    autocast: float32 throughout.
    """
    import torch

    return device == "cuda" and base_dtype == torch.bfloat16


def _sort_config_sets(model: Any) -> None:
    """Turn the set fields of the model's peft configs (`target_modules`, ...) into sorted lists.

    peft writes a set as a list in iteration order, which follows the process's string-hash seed:
    the same training would store a differently ordered adapter_config.json in every process.
    """
    for config in getattr(model, "peft_config", {}).values():
        for field, value in vars(config).items():
            if isinstance(value, set):
                setattr(config, field, sorted(value))


def release_memory() -> None:
    """Return what a finished training held (optimizer state, activations) before the next model loads."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_trained(stage: TrainingStage, store: Store):
    """A fresh base model with the stored trained weights: what every evaluation of the stage uses.

    Evaluations always start from the stored adapter, never from the model still in memory after
    training, so a manifest evaluated on another host, or later, gets exactly the same model.
    """
    from runner.models import load_model

    base = load_model(stage.loaded)
    adapter = store.sync_down(stage.keys.adapter)
    model = stage.method.load_trained(base.model, adapter, stage.loaded.manifest.method)
    model.eval()
    return replace(base, model=model)


def load_draft(source: DraftSource, store: Store):
    """The speculative draft, ready to propose: trained weights merged in where the method allows."""
    from runner.models import load_pretrained

    if source.training is not None:
        draft = load_trained(source.training, store)
        return replace(draft, model=draft.model.merge_and_unload()) if source.training.method.mergeable else draft
    if source.adapter is not None:
        from peft import PeftConfig, PeftModel

        if PeftConfig.from_pretrained(str(source.adapter)).is_prompt_learning:
            # Virtual tokens live outside the weights, so there is nothing to merge, and a bare
            # prompt-learning PeftModel loses them when assisted generation crops the draft's cache.
            raise UserError(
                f"decoding.draft.adapter {source.adapter}: a prompt-learning adapter cannot be merged into a draft; "
                "name the manifest that trained it as decoding.draft.manifest instead"
            )
        base = load_pretrained(source.model_spec, source.owner.base_dir)
        return replace(base, model=PeftModel.from_pretrained(base.model, str(source.adapter)).merge_and_unload().eval())
    return load_pretrained(source.model_spec, source.owner.base_dir)

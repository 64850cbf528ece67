"""`runner run`: one manifest as a short sequence of stages over one context built once.

    context      read the data once, resolve the model, derive the stage digests, open the store
    heal         damaged stored objects (corrupt, missing, foreign) moved to `_quarantine/`: a
                 finished evaluation or training with damage is reopened, so the stages below redo it
    finished?    the evaluation's `_SUCCESS` exists → rescore if other metrics are asked, stop
    check        inputs that would fail late (shots, draft tokenizer) fail now, before any GPU work
    train        each training the evaluation needs (a fine-tuned draft's, then its own): reused
                 from storage when finished, waited for when another process holds its lease,
                 else trained here from the newest stored checkpoint
    evaluate     load the stored training onto a fresh base, generate the missing shards
    score        metrics.json from the stored shards, then `_SUCCESS`

Every stage is idempotent, so a rerun after any failure redoes only what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runner import distributed
from runner.console import error, log
from runner.context import RunContext, build_context
from runner.errors import UserError
from runner.storage import CorruptObject
from runner.evaluation import (
    generate_shards,
    heal,
    load_evaluated_model,
    mark_complete,
    pending_shards,
    record_provenance,
    record_start,
    rescore_if_asked,
    shard_count,
    write_metrics,
)
from runner.manifest import LoadedManifest, unanswerable
from runner.protocols import PROTOCOLS
from runner.paths import RunKeys
from runner.training_stage import ensure_trained, release_memory


@dataclass(frozen=True)
class RunOutcome:
    """How a `run` call ended."""

    uri: str
    keys: RunKeys
    skipped: bool


def publish_leftovers(context: RunContext) -> None:
    """Upload what an earlier attempt kept locally because storage failed (S3's local journal)."""
    if not distributed.is_main():
        return
    prefixes = [context.keys.prefix] + [stage.keys.prefix for stage in context.trainings]
    published = [key for prefix in prefixes for key in context.store.publish_pending(prefix)]
    if published:
        log(f"uploaded {len(published)} artifact(s) an earlier attempt kept locally")


def heal_trainings(context: RunContext, deep: bool) -> bool:
    """Move a finished training's damaged adapter or completion record aside, so the training
    resumes from its newest whole checkpoint; whether anything was damaged."""
    from runner.verify_storage import check_training, repair

    healed = False
    for stage in context.trainings:
        check = check_training(context.store, stage.keys, deep=deep, checkpoints=False)
        if check:
            reasons = "; ".join(f"{f.key[len(stage.keys.prefix) + 1 :]}: {f.reason}" for f in check.findings if not f.reason.startswith("reopened"))
            log(f"repaired training {stage.keys.digest}: {reasons} — {repair(context.store, check)}; it resumes from its newest whole checkpoint")
            healed = True
    return healed


def heal_stages(context: RunContext) -> None:
    """Move damage aside before anything trusts storage: the evaluation's shards, checksums,
    metrics and `_SUCCESS`; each finished training's adapter and completion record (a damaged
    checkpoint is skipped when training resumes, runner/checkpoints.py). The adapter check here
    compares file lists and recorded checksums; its bytes are checked as they download."""
    if not distributed.is_main():
        return
    heal_trainings(context, deep=False)
    heal(context)


def check_inputs(context: RunContext) -> None:
    """Problems only the data or the tokenizers reveal, raised before any model loads or trains."""
    shots, pool = context.manifest.icl.shots, len(context.data.train)
    if shots > pool:
        raise UserError(f"icl.shots: {shots} shots need at least as many examples in the train split, which has {pool}")
    protocol = PROTOCOLS.get(context.manifest.eval.protocol)
    unanswerable_rows = [e for e in context.data.evaluate if e.format not in protocol.formats]
    if unanswerable_rows:
        first = unanswerable_rows[0]
        raise UserError(f"data: {len(unanswerable_rows)} evaluated example(s), e.g. {first.id}: " + unanswerable(context.manifest.eval.protocol, first.dataset, first.format))
    context.decoding.check(context.manifest.decoding, context)
    use = "trains on" if context.training is not None else "draws its shots from"
    for dataset, counts in context.data.train_eval_overlap.items() if distributed.is_main() else ():
        if counts["in_train"]:
            error(
                f"warning: {counts['in_train']} of the {counts['evaluated']} evaluated {dataset} examples have the input of an example "
                f"in the {context.manifest.data.train_split} split this run {use}: their scores are not held out (provenance.json: train_eval_overlap)"
            )


def train_stages(context: RunContext, wait: bool) -> dict[str, Any] | None:
    """Every training the evaluation needs, done or reused; the summary of its own training."""
    summary = None
    for stage in context.trainings:
        result = ensure_trained(stage, context.store, wait)
        release_memory()
        if stage is context.training:
            summary = result
    return summary


def evaluate(context: RunContext) -> None:
    """Generate this process's missing shards with the stored training on a fresh base model."""
    todo = pending_shards(context)
    distributed.barrier()  # every rank has the same list before any rank writes a shard
    if not todo:
        return
    if len(todo) < shard_count(context):
        log(f"resuming: {shard_count(context) - len(todo)} of {shard_count(context)} shards already done")
    target = load_evaluated_model(context)
    if distributed.is_main():
        record_provenance(context, target.device)
    mine = distributed.share(todo)  # every N-th missing shard for each of N data-parallel processes
    if mine:
        generate_shards(context, target, mine)


def run(loaded: LoadedManifest, storage: str | None = None, wait: bool = True) -> RunOutcome:
    """Run a manifest to completion; skip it when its evaluation's `_SUCCESS` exists.

    `wait=False` raises TrainingBusy instead of waiting when another process trains a stage this
    run needs, so a caller with other manifests can run those first.
    """
    context = build_context(loaded, storage)
    distributed.init()
    publish_leftovers(context)
    heal_stages(context)
    distributed.barrier()  # every rank sees storage as healed
    if context.store.exists(context.keys.success):
        rescore_if_asked(context)
        return RunOutcome(context.location, context.keys, skipped=True)
    check_inputs(context)
    log(f"run {loaded.manifest.name} → {context.location}")
    if distributed.is_main():
        record_start(context)
    summary = train_stages(context, wait)
    try:
        evaluate(context)
    except CorruptObject:
        # An adapter whose bytes fail their checksums on download: set it aside, train it again
        # from its newest whole checkpoint, and evaluate with that (one process decides alone).
        if distributed.world_size() > 1 or not heal_trainings(context, deep=True):
            raise
        summary = train_stages(context, wait)
        evaluate(context)
    distributed.barrier()  # every rank's shards are stored
    if distributed.is_main():
        mark_complete(context, write_metrics(context, summary))
    return RunOutcome(context.location, context.keys, skipped=False)

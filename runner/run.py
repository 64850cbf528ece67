"""`runner run`: one manifest from data to `_SUCCESS`, idempotent and resumable.

Order of writes: manifest.yaml and provenance.json first, the adapter once training ends, each
prediction shard as it completes, metrics.json, and `_SUCCESS` last — so `_SUCCESS` present means
everything else is complete, and anything missing is redone on the next attempt.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from runner import distributed, preemption
from runner.console import log, progress
from runner.data import Example, data_hash, load_split
from runner.errors import DataError, StorageError, UserError
from runner.manifest import LoadedManifest, load_manifest, resolved_dict, run_digest
from runner.methods import METHODS
from runner.paths import RunKeys
from runner.shards import completed_shards, encode_shard, read_predictions, read_predictions_and_checksums
from runner.storage import Store, open_store

TRAIN_SUMMARY = "qabench_train.json"


@dataclass(frozen=True)
class RunOutcome:
    """How a `run` call ended."""

    uri: str
    keys: RunKeys
    skipped: bool


def _data_identity(loaded: LoadedManifest) -> tuple[str, dict[str, str]]:
    files = loaded.data_files()
    per_file = {str(f.relative_to(loaded.resolve(loaded.manifest.data.root))): data_hash([f]) for f in files}
    return data_hash(files), per_file


def plan(loaded: LoadedManifest, storage: str | None) -> tuple[Store, RunKeys, dict[str, str]]:
    """The store and keys a manifest's run lives under, and the data file hashes."""
    from runner.manifest import fetch_command, unfetched_data

    missing = unfetched_data(loaded)
    if missing:
        raise DataError(f"{len(missing)} data file(s) not fetched yet, e.g. {missing[0]}; run `{fetch_command(missing)}`")
    combined, per_file = _data_identity(loaded)
    store = open_store(storage or loaded.manifest.output.storage)
    return store, RunKeys(loaded.manifest.name, run_digest(loaded, combined)), per_file


def _load_examples(loaded: LoadedManifest) -> tuple[list[Example], list[Example]]:
    data = loaded.manifest.data
    root = loaded.resolve(data.root)
    evaluate = load_split(root, data.datasets, data.eval_split, data.max_eval_examples)
    needs_train = METHODS.get(loaded.manifest.method.kind).trains or loaded.manifest.icl.shots > 0
    train = load_split(root, data.datasets, data.train_split, data.max_train_examples) if needs_train else []
    return evaluate, train


def _prepare_model(loaded: LoadedManifest, store: Store, keys: RunKeys, train_examples: list[Example]):
    """Load the base model, then apply the method and train it, or reload what was trained."""
    import transformers

    from runner.checkpoints import checkpoint_publisher, publish_log, restore_training
    from runner.icl import PromptFormat
    from runner.methods import MethodContext
    from runner.models import load_model
    from runner.train import planned_steps, train

    manifest = loaded.manifest
    method = METHODS.get(manifest.method.kind)
    log(f"loading model {manifest.model.hub or manifest.model.path or manifest.model.package}")
    base = load_model(loaded)
    fmt = PromptFormat(base.tokenizer, manifest.icl)
    steps = planned_steps(manifest.train, len(train_examples)) if method.trains else 0
    context = MethodContext(total_steps=steps, model_type=base.model.config.model_type, tokenizer=base.tokenizer, device=base.device)
    if not method.trains:
        return method.apply(base.model, manifest.method, context), fmt, base, None
    if store.dir_complete(keys.adapter):
        adapter = store.sync_down(keys.adapter)
        log("training already done; loading the saved weights")
        summary = json.loads((adapter / TRAIN_SUMMARY).read_text())
        return method.load_trained(base.model, adapter, manifest.method), fmt, base, summary
    # Adapter initialisation draws from torch's global generator; seeding it makes it repeatable.
    transformers.set_seed(manifest.train.seed)
    model = method.apply(base.model, manifest.method, context)
    checkpoint_dir, log_path = store.local_dir(keys.checkpoints), store.local_dir(keys.prefix) / "train_log.jsonl"
    if distributed.is_main():
        restore_training(store, keys, checkpoint_dir, log_path)  # a fresh host continues from storage
    distributed.barrier()
    # The publisher goes last: the method's callbacks may still be writing into the checkpoint.
    publisher = checkpoint_publisher(store, keys, checkpoint_dir, log_path)
    result = train(
        model,
        fmt,
        train_examples,
        manifest.train,
        checkpoint_dir=checkpoint_dir,
        log_path=log_path,
        extra_callbacks=lambda steps: [*method.trainer_callbacks(model, manifest.method, steps), publisher],
        device=base.device,
        use_bf16=base.device == "cuda" and str(base.model.dtype) == "torch.bfloat16",
    )
    summary = result.as_dict()
    if not distributed.is_main():
        model.eval()
        return model, fmt, base, summary
    with tempfile.TemporaryDirectory() as staging:
        method.save_trained(model, Path(staging))
        summary["adapter_bytes"] = sum(f.stat().st_size for f in Path(staging).rglob("*") if f.is_file())
        (Path(staging) / TRAIN_SUMMARY).write_text(json.dumps(summary, indent=2))
        store.put_dir(keys.adapter, Path(staging))
    publish_log(store, keys, log_path)
    log(f"trained {result.steps} steps in {result.seconds:.0f}s, final loss {result.final_loss:.4f}")
    model.eval()
    return model, fmt, base, summary


def _generate_shards(loaded, model, fmt, base, store, keys, evaluate, train_pool, todo: list[int]) -> None:
    from runner.decoding import DECODINGS
    from runner.generate import Query, generate_batch, length_batches
    from runner.icl import select_shots, shot_rng
    from runner.backoff import MemoryBackoff
    from runner.perplexity import reference_nll
    from runner.prefix_cache import PrefixCache

    manifest = loaded.manifest
    decoding, size = manifest.decoding, manifest.eval.shard_size
    score_references = manifest.eval.reference_perplexity
    overhead = METHODS.get(manifest.method.kind).prompt_overhead(manifest.method)
    budget = base.context_length - decoding.largest_new_tokens - overhead
    if budget < 16:
        raise UserError(
            f"decoding.max_new_tokens: {decoding.largest_new_tokens} new tokens (+{overhead} method tokens) leave "
            f"{budget} of the model's {base.context_length}-token context for the prompt"
        )
    if manifest.icl.shots >= len(train_pool) and manifest.icl.shots:
        raise UserError(f"icl.shots: {manifest.icl.shots} shots need more than the {len(train_pool)} examples in the train split")

    def by_format(query: Query) -> int:
        return decoding.new_tokens_for(query.example.format)
    extra = DECODINGS.get(decoding.kind).prepare(decoding, loaded, base)
    # Methods that add tokens to every prompt inside the model (prompt tuning's virtual tokens)
    # would add them again in front of each piece of a split prompt.
    prefix_cache = PrefixCache(model, base.device) if overhead == 0 else None
    total = sum(len(evaluate[i * size : (i + 1) * size]) for i in todo)
    def queries_of(index: int) -> list[Query]:
        queries = []
        for example in evaluate[index * size : (index + 1) * size]:
            icl = manifest.icl
            rng = shot_rng(icl.seed, example, icl.same_shots_for_all)
            shots = select_shots(example, train_pool, icl.shots, rng, icl.strategy)
            prompt, ids = fmt.fit(example, shots, budget)
            queries.append(Query(example, prompt, ids))
        return queries

    def answer_and_score(batch: list[Query]):
        generated = generate_batch(model, fmt.tokenizer, batch, decoding, base.device, extra, prefix_cache)
        if not score_references:
            return generated, [(None, None)] * len(batch)
        return generated, reference_nll(model, fmt, batch, base.device, base.context_length)

    backoff = MemoryBackoff(decoding.batch_size)
    warmup = length_batches(queries_of(todo[0]), decoding.batch_size, by_format)[: decoding.warmup_batches]
    for batch in warmup:  # untimed: first calls pay for allocation and kernel selection
        backoff.run(batch, lambda part: generate_batch(model, fmt.tokenizer, part, decoding, base.device, extra, prefix_cache))
    with progress("generating", total) as bar:
        for index in todo:
            queries = queries_of(index)
            rows = []
            for number, batch in enumerate(length_batches(queries, decoding.batch_size, by_format)):
                parts = backoff.run(batch, answer_and_score)
                for part_number, (part, (generated, likelihoods)) in enumerate(parts):
                    label = f"{index:05d}-{number:04d}" + (f"-{part_number}" if len(parts) > 1 else "")
                    for row, (nll, tokens) in zip(generated, likelihoods):
                        rows.append({**row, "batch": label, "reference_nll": nll, "reference_tokens": tokens})
                bar.advance(len(batch))
            # First writer wins: a run started twice leaves one version of each shard.
            store.write_new(keys.shard(index), encode_shard(rows))
            preemption.stop_if_requested(f"shard {index}")


def _write_metrics(loaded: LoadedManifest, store: Store, keys: RunKeys, evaluate: list[Example], train_summary) -> dict[str, Any]:
    from runner.score import compute_metrics

    table, checksums = read_predictions_and_checksums(store, keys)
    expected = {e.id for e in evaluate}
    found = table.column("id").to_pylist()
    if len(found) != len(expected) or set(found) != expected:
        raise StorageError(f"shards under {keys.predictions} hold {len(found)} predictions, expected {len(expected)}; delete the run folder and rerun")
    method = METHODS.get(loaded.manifest.method.kind)
    metrics = {
        "name": loaded.manifest.name,
        "digest": keys.digest,
        "method": {
            "kind": loaded.manifest.method.kind,
            "adapter_merged_for_eval": loaded.manifest.eval.merge_adapter and method.mergeable,
            **method.record(loaded.manifest.method),
        },
        **compute_metrics(table, loaded.manifest.eval.metrics),
    }
    if train_summary is not None:
        metrics["train"] = train_summary
    store.write_bytes(keys.checksums, json.dumps({"sha256": checksums}, indent=2, sort_keys=True).encode())
    store.write_bytes(keys.metrics, json.dumps(metrics, indent=2).encode())
    return metrics


def _rescore_with(store: Store, keys: RunKeys, stored: dict[str, Any], metrics: tuple[str, ...]) -> None:
    """Score a finished run's saved predictions with another metric list (no model needed)."""
    from runner.score import compute_metrics

    previous = json.loads(store.read_bytes(keys.metrics))
    recomputed = compute_metrics(read_predictions(store, keys), list(metrics))
    stored["eval"]["metrics"] = list(metrics)
    store.write_bytes(keys.manifest, yaml.safe_dump(stored, sort_keys=False).encode())
    store.write_bytes(keys.metrics, json.dumps({**previous, **recomputed}, indent=2).encode())


def run(manifest_path: Path, storage: str | None = None) -> RunOutcome:
    """Run a manifest to completion, skipping it when `_SUCCESS` already exists."""
    from runner import provenance

    loaded = load_manifest(manifest_path)
    manifest = loaded.manifest
    store, keys, data_files = plan(loaded, storage)
    location = f"{store.uri}/{keys.prefix}"
    distributed.init()
    # what an attempt that lost storage kept locally
    published = store.publish_pending(keys.prefix) if distributed.is_main() else []
    if published:
        log(f"uploaded {len(published)} artifact(s) an earlier attempt kept locally")
    if store.exists(keys.success):
        stored = yaml.safe_load(store.read_bytes(keys.manifest))
        if tuple(stored["eval"]["metrics"]) != manifest.eval.metrics:
            _rescore_with(store, keys, stored, manifest.eval.metrics)
            log(f"already complete; rescored with {', '.join(manifest.eval.metrics)}: {location}")
        else:
            log(f"already complete, nothing to do: {location}")
        return RunOutcome(location, keys, skipped=True)
    log(f"run {manifest.name} → {location}")
    if distributed.is_main():
        store.write_bytes(keys.manifest, yaml.safe_dump(resolved_dict(manifest), sort_keys=False).encode())
    evaluate, train_pool = _load_examples(loaded)
    n_shards = math.ceil(len(evaluate) / manifest.eval.shard_size)
    todo = sorted(set(range(n_shards)) - completed_shards(store, keys))
    distributed.barrier()  # every rank has the same list before any rank writes a shard
    method = METHODS.get(manifest.method.kind)
    summary = None
    if todo:
        if len(todo) < n_shards:
            log(f"resuming: {n_shards - len(todo)} of {n_shards} shards already done")
        model, fmt, base, summary = _prepare_model(loaded, store, keys, train_pool)
        if manifest.eval.merge_adapter and method.mergeable:
            # merge_and_unload returns the base model with updated weights; the saved adapter stays.
            model = model.merge_and_unload()
        if distributed.is_main():
            record = provenance.collect(base.device, base.identity, data_files, keys.digest)
            store.write_bytes(keys.provenance, json.dumps(record, indent=2).encode())
        mine = distributed.share(todo)
        if mine:
            _generate_shards(loaded, model, fmt, base, store, keys, evaluate, train_pool, mine)
    elif method.trains and store.dir_complete(keys.adapter):
        summary = json.loads(store.read_bytes(f"{keys.adapter}/{TRAIN_SUMMARY}"))
    distributed.barrier()  # every rank's shards are stored
    if not distributed.is_main():
        return RunOutcome(location, keys, skipped=False)
    metrics = _write_metrics(loaded, store, keys, evaluate, summary)
    # _write_metrics read every shard back from storage (S3: each checked against its SHA-256)
    # and matched the example ids, so _SUCCESS vouches for objects confirmed in storage.
    store.write_bytes(keys.success, json.dumps({"completed_at": time.time()}).encode())
    overall = metrics["overall"]
    shown = ", ".join(f"{k} {v:.3f}" for k, v in overall.items() if k != "n" and v is not None)
    log(f"done: n={overall['n']} {shown} → {location}")
    return RunOutcome(location, keys, skipped=False)

"""The evaluation stage: prompts → prediction shards → metrics.json → `_SUCCESS`, under `<name>/<digest>/`.

Write order: manifest.yaml and provenance.json first, each shard as it completes (first writer
wins), the checksums, metrics.json, `_SUCCESS` last — so `_SUCCESS` present means everything
else is complete, and anything missing is redone on the next attempt.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any

import yaml

from runner import preemption
from runner.console import log, progress
from runner.context import RunContext
from runner.errors import StorageError, UserError
from runner.manifest import resolved_dict
from runner.shards import completed_shards, encode_shard, read_predictions, read_predictions_and_checksums


def shard_count(context: RunContext) -> int:
    """How many prediction shards the evaluation writes."""
    return math.ceil(len(context.data.evaluate) / context.manifest.eval.shard_size)


def pending_shards(context: RunContext) -> list[int]:
    """Shard numbers not yet in storage."""
    return sorted(set(range(shard_count(context))) - completed_shards(context.store, context.keys))


def record_start(context: RunContext) -> None:
    """manifest.yaml: the resolved manifest plus the trainings the evaluation uses."""
    stored = resolved_dict(context.manifest)
    stored["stages"] = {
        "training": context.training.keys.digest if context.training else None,
        "draft_training": context.draft.training.keys.digest if context.draft and context.draft.training else None,
    }
    context.store.write_bytes(context.keys.manifest, yaml.safe_dump(stored, sort_keys=False).encode())


def record_provenance(context: RunContext, device: str) -> None:
    """provenance.json: code, packages, device, model, data (with the evaluated ids), the stages used and the `--set` overrides."""
    from runner import provenance

    record = provenance.collect(device, context.model.as_dict(), {**context.data.train_hashes, **context.data.eval_hashes}, context.keys.digest)
    record["eval_sample"] = context.data.eval_sample
    record["train_eval_overlap"] = context.data.train_eval_overlap
    record["training"] = context.training.keys.digest if context.training else None
    # The resolved manifest (manifest.yaml) holds their values; this says they came from the command line.
    record["overrides"] = [str(override) for override in context.loaded.overrides]
    if context.draft is not None:
        record["draft"] = context.draft.fingerprint
    context.store.write_bytes(context.keys.provenance, json.dumps(record, indent=2).encode())


def load_evaluated_model(context: RunContext):
    """The model as evaluated: the base (method applied) or the stored training, merged when allowed."""
    from runner.methods import MethodContext
    from runner.models import load_model
    from runner.training_stage import load_trained

    if context.training is not None:
        loaded = load_trained(context.training, context.store)
    else:
        loaded = load_model(context.loaded)
        method_context = MethodContext(total_steps=0, model_type=loaded.model.config.model_type, tokenizer=loaded.tokenizer, device=loaded.device)
        loaded = replace(loaded, model=context.method.apply(loaded.model, context.manifest.method, method_context))
    if context.manifest.eval.merge_adapter and context.method.mergeable:
        # merge_and_unload returns the base model with updated weights; the stored adapter stays.
        loaded = replace(loaded, model=loaded.model.merge_and_unload())
    return loaded


def generate_shards(context: RunContext, target, todo: list[int]) -> None:
    """Answer and store the shards in `todo`, one Parquet object each."""
    from runner.backoff import MemoryBackoff
    from runner.generate import Query, length_batches
    from runner.icl import PromptFormat, select_shots, shot_rng
    from runner.perplexity import reference_nll
    from runner.prefix_cache import PrefixCache
    from runner.protocols import PROTOCOLS, prepare

    manifest, store, keys = context.manifest, context.store, context.keys
    decoding, size, icl = manifest.decoding, manifest.eval.shard_size, manifest.icl
    protocol = PROTOCOLS.get(manifest.eval.protocol)
    evaluate, pool = context.data.evaluate, list(context.data.train)
    overhead = context.method.prompt_overhead(manifest.method)
    fmt = PromptFormat(target.tokenizer, icl, context.prompt_style)

    def budget_of(example) -> int:
        reserved = protocol.reserve(fmt, example, decoding)
        budget = target.context_length - reserved - overhead
        if budget < 16:
            raise UserError(
                f"{example.id}: {reserved} tokens reserved for the answer (+{overhead} method tokens) leave "
                f"{budget} of the model's {target.context_length}-token context for the prompt; lower decoding.max_new_tokens"
            )
        return budget

    def by_format(query: Query) -> int:
        return decoding.new_tokens_for(query.example.format) if protocol.decodes else 0

    state = prepare(context, target, fmt, PrefixCache(target.model, target.device) if context.method.shares_prompt_prefix else None)
    total = sum(len(evaluate[i * size : (i + 1) * size]) for i in todo)

    def queries_of(index: int) -> list[Query]:
        queries = []
        for example in evaluate[index * size : (index + 1) * size]:
            rng = shot_rng(icl.seed, example, icl.same_shots_for_all)
            shots = select_shots(example, pool, icl.shots, rng, icl.strategy)
            prompt, ids = fmt.fit(example, shots, budget_of(example))
            queries.append(Query(example, prompt, ids))
        return queries

    def answer(batch: list[Query]):
        return protocol.answer(state, batch)

    def answer_and_score(batch: list[Query]):
        answered = answer(batch)
        if not manifest.eval.reference_perplexity:
            return answered, [(None, None)] * len(batch)
        return answered, reference_nll(target.model, fmt, batch, target.device, target.context_length)

    backoff = MemoryBackoff(decoding.batch_size)
    for batch in length_batches(queries_of(todo[0]), decoding.batch_size, by_format)[: decoding.warmup_batches]:
        backoff.run(batch, answer)  # untimed: first calls pay for allocation and kernel selection
    with progress("generating" if protocol.decodes else "scoring choices", total) as bar:
        for index in todo:
            rows = []
            for number, batch in enumerate(length_batches(queries_of(index), decoding.batch_size, by_format)):
                parts = backoff.run(batch, answer_and_score)
                for part_number, (part, (answered, likelihoods)) in enumerate(parts):
                    label = f"{index:05d}-{number:04d}" + (f"-{part_number}" if len(parts) > 1 else "")
                    for row, (nll, tokens) in zip(answered, likelihoods):
                        rows.append({**row, "batch": label, "prompt_format": fmt.style, "reference_nll": nll, "reference_tokens": tokens})
                bar.advance(len(batch))
            # First writer wins: an evaluation run twice at once leaves one version of each shard.
            store.write_new(keys.shard(index), encode_shard(rows))
            preemption.stop_if_requested(f"shard {index}")


def write_metrics(context: RunContext, train_summary: dict[str, Any] | None) -> dict[str, Any]:
    """metrics.json from the stored shards (read back, checksums verified, example ids matched)."""
    from runner.score import compute_metrics

    store, keys, manifest = context.store, context.keys, context.manifest
    table, checksums = read_predictions_and_checksums(store, keys)
    expected = {e.id for e in context.data.evaluate}
    found = table.column("id").to_pylist()
    if len(found) != len(expected) or set(found) != expected:
        raise StorageError(
            f"shards under {keys.predictions} hold {len(found)} predictions, expected {len(expected)}; "
            f"`python -m runner verify {store.uri} --repair` moves the wrong ones aside and the next run regenerates them"
        )
    metrics = {
        "name": manifest.name,
        "digest": keys.digest,
        "training": context.training.keys.digest if context.training else None,
        "method": {
            "kind": manifest.method.kind,
            "adapter_merged_for_eval": manifest.eval.merge_adapter and context.method.mergeable,
            **context.method.record(manifest.method),
        },
        **compute_metrics(table, manifest.eval.metrics),
    }
    if train_summary is not None:
        metrics["train"] = train_summary
    metrics["icl"] = shots_used(table, manifest.icl.shots)
    store.write_bytes(keys.checksums, json.dumps({"sha256": checksums}, indent=2, sort_keys=True).encode())
    store.write_bytes(keys.metrics, json.dumps(metrics, indent=2).encode())
    return metrics


def shots_used(table, requested: int) -> dict[str, Any]:
    """How many shots the prompts really held: a small pool or the context fit can give fewer than asked."""
    used = table.column("n_shots").to_pylist()
    short = sum(1 for n in used if n < requested)
    return {
        "shots_requested": requested,
        "rows_with_fewer_shots": short,
        "shots_used_min": min(used) if used else None,
        "shots_used_mean": sum(used) / len(used) if used else None,
    }


def mark_complete(context: RunContext, metrics: dict[str, Any]) -> None:
    """`_SUCCESS`, last: write_metrics read every shard back from storage and matched the example ids.

    It records this run's digest and the sha256 of the checksum list and metrics.json it vouches
    for, so a foreign or altered one is told apart from the run's own (runner/verify_storage.py).
    """
    from runner.verify_storage import seal

    seal(context.store, context.keys)
    overall = metrics["overall"]
    shown = ", ".join(f"{k} {v:.3f}" for k, v in overall.items() if k != "n" and v is not None)
    log(f"done: n={overall['n']} {shown} → {context.location}")


def heal(context: RunContext) -> None:
    """Damage in this evaluation's stored objects moved aside, so the stages that follow redo it.

    Every stored shard is read: against `_CHECKSUMS.json` when the run wrote one, else decoded and
    its example ids matched with the shard's share of the data. A finished run with anything
    damaged or missing is reopened (its `_SUCCESS` quarantined too); one line says what was done.
    """
    from runner.verify_storage import check_evaluation, repair

    ids = [example.id for example in context.data.evaluate]
    size = context.manifest.eval.shard_size
    check = check_evaluation(context.store, context.keys, [ids[start : start + size] for start in range(0, len(ids), size)])
    if not check:
        return
    reasons = "; ".join(f"{f.key[len(context.keys.prefix) + 1 :]}: {f.reason}" for f in check.findings if not f.reason.startswith("reopened"))
    done = repair(context.store, check)
    then = "reopened; redoing what is missing" if check.reopened else "regenerating what was moved"
    log(f"repaired {context.location}: {reasons} — {done}; {then}")


def _reseal(context: RunContext) -> None:
    from runner.verify_storage import seal

    seal(context.store, context.keys)


def rescore_if_asked(context: RunContext) -> None:
    """A finished evaluation asked for other metrics is rescored from its shards (no model needed)."""
    from runner.score import compute_metrics, read_stored

    store, keys, metrics = context.store, context.keys, context.manifest.eval.metrics
    stored = read_stored(store, keys.manifest, ("eval", "metrics"))
    if tuple(stored["eval"]["metrics"]) == metrics:
        log(f"already complete, nothing to do: {context.location}")
        return
    previous = read_stored(store, keys.metrics)
    recomputed = compute_metrics(read_predictions(store, keys), list(metrics))
    stored["eval"]["metrics"] = list(metrics)
    store.write_bytes(keys.manifest, yaml.safe_dump(stored, sort_keys=False).encode())
    store.write_bytes(keys.metrics, json.dumps({**previous, **recomputed}, indent=2).encode())
    _reseal(context)  # _SUCCESS vouches for the metrics.json just written
    log(f"already complete; rescored with {', '.join(metrics)}: {context.location}")

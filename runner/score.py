"""Scoring saved predictions into metrics.json — a CPU step that never needs the model."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Sequence

import pyarrow as pa

from runner.scoring import SCORERS, Scored, aggregate

# Shard columns a scorer may read (see runner.scoring.Scored).
_SCORED_COLUMNS = ("id", "dataset", "format", "prediction", "references", "options", "choices", "choice_logprobs", "reference_nll", "reference_tokens")


def score_rows(rows: Sequence[dict], metrics: Sequence[str]) -> list[dict[str, float | None]]:
    """Per-example scores for each requested metric; rows are shard rows as dicts."""
    scorers = {name: SCORERS.get(name) for name in metrics}
    items = [Scored.from_row(row) for row in rows]
    return [{name: s.score(item) for name, s in scorers.items()} for item in items]


def reference_perplexity(rows: Sequence[dict]) -> float | None:
    """exp(total answer NLL / total answer tokens): per-token perplexity of the reference answers."""
    scored = [r for r in rows if r.get("reference_nll") is not None and r.get("reference_tokens")]
    tokens = sum(r["reference_tokens"] for r in scored)
    return math.exp(sum(r["reference_nll"] for r in scored) / tokens) if tokens else None


def _summary(rows: Sequence[dict], scores: Sequence[dict[str, float | None]], metrics: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"n": len(scores)}
    for name in metrics:
        out[name] = aggregate(SCORERS.get(name), [s[name] for s in scores])
    out["reference_perplexity"] = reference_perplexity(rows)
    return out


def _percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile, q in [0, 100]."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def _speed(table: pa.Table) -> dict[str, Any]:
    """Generation speed from per-batch timings: each batch counted once; prompts never count as output."""
    wanted = ["batch", "batch_seconds", "output_tokens", "prompt_tokens", "batch_first_token_seconds", "batch_peak_memory_bytes",
              "batch_target_forwards", "draft_proposed_tokens", "draft_accepted_tokens"]
    rows = table.select([c for c in wanted if c in table.column_names]).to_pylist()
    batches = {row["batch"]: row for row in rows}
    seconds = sum(b["batch_seconds"] for b in batches.values())
    first = [b["batch_first_token_seconds"] for b in batches.values() if b.get("batch_first_token_seconds") is not None]
    peaks = [b["batch_peak_memory_bytes"] for b in batches.values() if b.get("batch_peak_memory_bytes") is not None]
    generated = sum(r["output_tokens"] for r in rows)
    prompt = sum(r["prompt_tokens"] for r in rows)
    # Every example in a batch waits for the whole batch: its latency is the batch's wall time.
    latencies = [r["batch_seconds"] for r in rows]
    return {
        "examples": len(rows),
        "batches": len(batches),
        "generation_seconds": seconds,
        "generated_tokens": generated,
        "prompt_tokens": prompt,
        # Tokens the model produced (answers only, never the echoed prompt) per second of generate().
        "generated_tokens_per_second": generated / seconds if seconds else None,
        # Prefill throughput: prompt tokens over the time to each batch's first token.
        "prompt_tokens_per_second": prompt / sum(first) if first and len(first) == len(batches) and sum(first) else None,
        "examples_per_second": len(rows) / seconds if seconds else None,
        "time_to_first_token_p50": _percentile(first, 50),
        "latency_p50": _percentile(latencies, 50),
        "latency_p95": _percentile(latencies, 95),
        "peak_memory_bytes": max(peaks) if peaks else None,
        **_assistance(rows, batches, generated),
    }


def _assistance(rows: list[dict], batches: dict[str, dict], generated: int) -> dict[str, Any]:
    """How much each target forward pass yielded, and how often a draft's proposal was accepted."""
    forwards = [b.get("batch_target_forwards") for b in batches.values()]
    proposed = [r["draft_proposed_tokens"] for r in rows if r.get("draft_proposed_tokens") is not None]
    accepted = [r["draft_accepted_tokens"] for r in rows if r.get("draft_accepted_tokens") is not None]
    counted = bool(forwards) and all(f is not None for f in forwards)
    return {
        "target_forwards": sum(forwards) if counted else None,
        # Below 1 when a forward pass yields more than one token: a batch, or accepted drafts.
        "target_forwards_per_generated_token": sum(forwards) / generated if counted and generated else None,
        "draft_proposed_tokens": sum(proposed) if proposed else None,
        "draft_accepted_tokens": sum(accepted) if accepted else None,
        "acceptance_rate": sum(accepted) / sum(proposed) if proposed and sum(proposed) else None,
    }


def compute_metrics(table: pa.Table, metrics: Sequence[str]) -> dict[str, Any]:
    """Overall, per-dataset and per-format metrics plus generation speed."""
    rows = table.select([c for c in _SCORED_COLUMNS if c in table.column_names]).to_pylist()
    scores = score_rows(rows, metrics)
    by_dataset: dict[str, list] = defaultdict(list)
    by_format: dict[str, list] = defaultdict(list)
    for pair in zip(rows, scores):
        by_dataset[pair[0]["dataset"]].append(pair)
        by_format[pair[0]["format"]].append(pair)

    def summary(pairs) -> dict[str, Any]:
        return _summary([p[0] for p in pairs], [p[1] for p in pairs], metrics)

    return {
        "metrics": list(metrics),
        "overall": _summary(rows, scores, metrics),
        "by_dataset": {k: summary(v) for k, v in sorted(by_dataset.items())},
        "by_format": {k: summary(v) for k, v in sorted(by_format.items())},
        "generation": _speed(table) if table.num_rows else {},
    }


def read_stored(store: Any, key: str, needs: tuple[str, ...] = ()) -> dict[str, Any]:
    """A stored JSON or YAML mapping (metrics.json, manifest.yaml) holding the nested keys `needs`.

    A truncated, empty or foreign object is a StorageError naming it, never a traceback.
    """
    import json

    import yaml

    from runner.errors import StorageError

    data = store.read_bytes(key)
    try:
        value = json.loads(data) if key.endswith(".json") else yaml.safe_load(data)
    except (ValueError, RecursionError, yaml.YAMLError) as exc:  # UnicodeDecodeError is a ValueError
        reason = f"not {'JSON' if key.endswith('.json') else 'YAML'}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    else:
        inner, reason = value, None
        for part in needs:
            if not isinstance(inner, dict) or part not in inner:
                reason = "empty" if value is None else f"holds no {'.'.join(needs)}"
                break
            inner = inner[part]
        if reason is None and isinstance(value, dict):
            return value
        reason = reason or f"{'empty' if value is None else 'not a mapping'}"
    raise StorageError(
        f"{store.uri.rstrip('/')}/{key} is damaged ({reason}); `python -m runner verify {store.uri} --repair` "
        "moves it aside and reopens the run, and the next run of its manifest redoes it"
    )


def rescore(location: str) -> dict[str, Any]:
    """Recompute metrics.json of a stored run from its shards with the current scorers."""
    import json

    from runner.errors import UserError
    from runner.paths import RunKeys
    from runner.shards import read_predictions
    from runner.storage import open_store

    root, _, rest = location.rstrip("/").rpartition("/")
    root, _, name = root.rpartition("/")
    if not name or not rest:
        raise UserError(f"{location!r} is not a run location like runs/<name>/<digest>")
    store, keys = open_store(root or "."), RunKeys(name, rest)
    if not store.exists(keys.manifest):
        raise UserError(f"no run at {location} (no manifest.yaml)")
    manifest = read_stored(store, keys.manifest, ("eval", "metrics"))
    previous = read_stored(store, keys.metrics) if store.exists(keys.metrics) else {}
    metrics = {"name": name, "digest": keys.digest, **compute_metrics(read_predictions(store, keys), manifest["eval"]["metrics"])}
    # Facts from training and the method are not recomputable from shards; carry them over.
    for kept in ("method", "train"):
        if kept in previous:
            metrics[kept] = previous[kept]
    store.write_bytes(keys.metrics, json.dumps(metrics, indent=2).encode())
    return metrics

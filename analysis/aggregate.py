"""One summary row per run, recomputed from its predictions so every number traces to them."""

from __future__ import annotations

from typing import Any

from analysis.load import CompletedRun
from runner.score import compute_metrics


def model_label(model: dict[str, Any]) -> str:
    """A short name for the model block of a resolved manifest."""
    if model.get("hub"):
        return model["hub"] + (f"@{model['revision']}" if model.get("revision") else "")
    if model.get("package"):
        return model["package"]
    return str(model.get("path", "?")).rstrip("/").rsplit("/", 1)[-1]


def summarize(run: CompletedRun) -> dict[str, Any]:
    """The run's identity columns and its overall metrics."""
    manifest = run.manifest
    metrics = compute_metrics(run.predictions, manifest["eval"]["metrics"])
    speed = metrics["generation"]
    row: dict[str, Any] = {
        "run": run.keys.name,
        "digest": run.keys.digest,
        "model": model_label(manifest["model"]),
        "method": manifest["method"]["kind"],
        "shots": manifest["icl"]["shots"],
        "decoding": manifest["decoding"]["kind"],
        "n": metrics["overall"]["n"],
    }
    for name in manifest["eval"]["metrics"]:
        row[name] = metrics["overall"][name]
    for key in ("generated_tokens_per_second", "prompt_tokens_per_second", "examples_per_second", "time_to_first_token_p50", "latency_p50", "latency_p95"):
        row[key] = speed.get(key)
    row["generation_peak_memory_gib"] = speed["peak_memory_bytes"] / 2**30 if speed.get("peak_memory_bytes") else None
    train = run.metrics.get("train") or {}
    row["trainable_percent"] = train.get("trainable_percent")
    row["train_seconds"] = train.get("seconds")
    row["train_tokens_per_second"] = train.get("tokens_per_second")
    row["heldout_perplexity"] = train.get("heldout_perplexity")
    peak = train.get("peak_memory_bytes")
    row["peak_memory_gib"] = peak / 2**30 if peak else None
    return row

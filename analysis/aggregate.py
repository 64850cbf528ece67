"""One summary per run, and per (run, format) and (run, dataset), recomputed from its rows.

A run is one configuration of (model, method, shots, decoding) — with its hyperparameters — so
summaries are per run and carry those four fields; two runs of the same four fields (a LoRA of
rank 4 and one of rank 16, say) stay two rows instead of being pooled into a mean of neither.
Quality means come with bootstrap CIs; speed comes from the per-batch timings in the shards;
training facts come from metrics.json, the only place they exist.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from analysis.load import Loaded, RunInfo
from analysis.stats import Estimate, bootstrap_mean

GIB = 2**30

SPEED_FIELDS = (
    "generated_tokens_per_second", "prompt_tokens_per_second", "examples_per_second", "time_to_first_token_p50",
    "latency_p50", "latency_p95", "generation_peak_memory_gib", "acceptance_rate", "prompt_tokens_mean", "output_tokens_mean",
)
"""Per-run generation figures, all recomputed from shard rows."""

TRAIN_FIELDS = ("heldout_perplexity", "trainable_percent", "train_seconds", "train_tokens_per_second", "train_peak_memory_gib")
"""Per-run training figures from metrics.json's `train` block (None for runs that trained nothing)."""


@dataclass(frozen=True)
class Summary:
    """Everything the report says about one run, or about one format or dataset within it."""

    run: RunInfo
    n: int
    quality: dict[str, Estimate]
    speed: dict[str, float | None] = field(default_factory=dict)
    training: dict[str, float | None] = field(default_factory=dict)
    slice_kind: str = ""
    """"format" or "dataset" for a slice of the run; "" for the whole run."""
    slice_value: str = ""


def _percentile(sorted_values: np.ndarray, q: float) -> float | None:
    """Nearest-rank percentile (the runner's definition), q in [0, 100]."""
    if len(sorted_values) == 0:
        return None
    return float(sorted_values[max(0, math.ceil(q / 100 * len(sorted_values)) - 1)])


def _fsum_ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def speed_of(rows: pa.Table) -> dict[str, float | None]:
    """Generation speed of one run, each batch's timing counted once.

    Every row of a batch repeats the batch's wall time, first-token time and peak memory; grouping
    by batch id recovers one value per batch. An example's latency is its batch's wall time.
    """
    if rows.num_rows == 0:
        return dict.fromkeys(SPEED_FIELDS)
    batches = rows.group_by("batch", use_threads=False).aggregate(
        [("batch_seconds", "min"), ("batch_first_token_seconds", "min"), ("batch_first_token_seconds", "count"), ("batch_peak_memory_bytes", "max")]
    )
    seconds = math.fsum(batches.column("batch_seconds_min").to_pylist())
    first_all = batches.column("batch_first_token_seconds_count").to_numpy()
    first = [v for v in batches.column("batch_first_token_seconds_min").to_pylist() if v is not None]
    peak = pc.max(batches.column("batch_peak_memory_bytes_max")).as_py()
    generated = pc.sum(rows.column("output_tokens")).as_py() or 0
    prompt = pc.sum(rows.column("prompt_tokens")).as_py() or 0
    latencies = np.sort(rows.column("batch_seconds").to_numpy(zero_copy_only=False))
    proposed = pc.sum(rows.column("draft_proposed_tokens")).as_py() if "draft_proposed_tokens" in rows.column_names else None
    accepted = pc.sum(rows.column("draft_accepted_tokens")).as_py() if "draft_accepted_tokens" in rows.column_names else None
    return {
        # Answer tokens only (never the echoed prompt) per second of generate().
        "generated_tokens_per_second": _fsum_ratio(generated, seconds),
        # Prefill throughput: prompt tokens over time to first token, only if every batch timed it.
        "prompt_tokens_per_second": _fsum_ratio(prompt, math.fsum(first)) if first and bool(np.all(first_all > 0)) else None,
        "examples_per_second": _fsum_ratio(rows.num_rows, seconds),
        "time_to_first_token_p50": _percentile(np.sort(np.array(first)), 50),
        "latency_p50": _percentile(latencies, 50),
        "latency_p95": _percentile(latencies, 95),
        "generation_peak_memory_gib": peak / GIB if peak else None,
        # Share of proposed draft tokens the target model accepted (speculative strategies only).
        "acceptance_rate": accepted / proposed if proposed and accepted is not None else None,
        "prompt_tokens_mean": prompt / rows.num_rows,
        "output_tokens_mean": generated / rows.num_rows,
    }


def training_of(run: RunInfo) -> dict[str, float | None]:
    """Training figures from metrics.json; None where the run did not train or did not record one."""
    train = run.train
    peak = train.get("peak_memory_bytes")
    return {
        "heldout_perplexity": train.get("heldout_perplexity"),
        "trainable_percent": train.get("trainable_percent"),
        "train_seconds": train.get("seconds"),
        "train_tokens_per_second": train.get("tokens_per_second"),
        "train_peak_memory_gib": peak / GIB if peak else None,
    }


def _quality(scores: dict[str, np.ndarray], rows: np.ndarray | slice, label: str, seed: int) -> dict[str, Estimate]:
    return {m: bootstrap_mean(values[rows], f"{label}|{m}", seed) for m, values in scores.items()}


def _codes(table: pa.Table, column: str) -> tuple[np.ndarray, list[str]]:
    encoded = pc.dictionary_encode(table.column(column)).combine_chunks()
    return encoded.indices.to_numpy(zero_copy_only=False), encoded.dictionary.to_pylist()


def summarize(loaded: Loaded, scores: dict[str, np.ndarray], seed: int = 0) -> tuple[list[Summary], list[Summary]]:
    """(one Summary per run, one per run × format and run × dataset), in report order."""
    runs: list[Summary] = []
    slices: list[Summary] = []
    sliced = {kind: _codes(loaded.table, kind) for kind in ("format", "dataset")} if loaded.table.num_rows else {}
    for run in loaded.runs:
        span = slice(run.start, run.stop)
        label = f"{run.name}/{run.digest}"
        rows = loaded.table.slice(run.start, run.stop - run.start)
        runs.append(Summary(run, rows.num_rows, _quality(scores, span, label, seed), speed_of(rows), training_of(run)))
        for kind, (codes, values) in sliced.items():
            within = codes[span]
            for code in sorted(np.unique(within), key=lambda c: values[c]):
                where = np.flatnonzero(within == code) + run.start
                name = values[code]
                slices.append(Summary(run, len(where), _quality(scores, where, f"{label}|{kind}={name}", seed), slice_kind=kind, slice_value=name))
    return sorted(runs, key=_report_order), sorted(slices, key=_report_order)


def _report_order(summary: Summary) -> tuple:
    run = summary.run
    return (run.model, run.method, run.shots, run.decoding, run.name, run.digest, summary.slice_kind, summary.slice_value)


def headline_metric(metrics: Sequence[str]) -> str | None:
    """The metric figures and one-number tables lead with.

    UnifiedQA's official metric (each dataset judged by its own measure) when it is scored, else
    exact match, else the first metric: one number comparable across every format.
    """
    for preferred in ("official", "exact_match"):
        if preferred in metrics:
            return preferred
    return metrics[0] if metrics else None


def as_row(summary: Summary, metrics: Sequence[str]) -> dict[str, Any]:
    """A flat row: identity, n, metric means, then each metric's n and CI, speed, training, run."""
    run = summary.run
    row: dict[str, Any] = {"model": run.model, "method": run.method, "shots": run.shots, "decoding": run.decoding}
    if summary.slice_kind:
        row["slice_kind"], row["slice"] = summary.slice_kind, summary.slice_value
    row["n"] = summary.n
    for m in metrics:
        row[m] = summary.quality[m].mean
    for m in metrics:
        estimate = summary.quality[m]
        row[f"{m}_n"], row[f"{m}_ci95_low"], row[f"{m}_ci95_high"] = estimate.n, estimate.low, estimate.high
    row.update(summary.training)
    row.update(summary.speed)
    row["run"], row["digest"] = run.name, run.digest
    return row

"""One summary per run, and per (run, format) and (run, dataset), recomputed from its rows; then
one per configuration, its seeds pooled.

A run is one configuration of (model, method, shots, decoding) — with its hyperparameters — so
summaries are per run and carry those four fields; two runs of the same four fields (a LoRA of
rank 4 and one of rank 16, say) stay two rows instead of being pooled into a mean of neither.
Runs that differ only in seeds (analysis/seeds.py) are one configuration: `pool_seeds` gives it
one summary, the mean of its per-seed means with their sd and t-interval, the runs kept inside.
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
from analysis.seeds import SEED_FIELDS, config_id, manifest_key, seed_label, seed_order, seeds_of
from analysis.stats import Estimate, across_seeds, bootstrap_mean

GIB = 2**30

SPEED_FIELDS = (
    "generated_tokens_per_second", "prompt_tokens_per_second", "examples_per_second", "time_to_first_token_p50",
    "latency_p50", "latency_p95", "generation_peak_memory_gib", "acceptance_rate", "prompt_tokens_mean", "output_tokens_mean",
    "eval_device_seconds_per_example",
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
    seeds: tuple[Summary, ...] = ()
    """The per-seed summaries pooled into this one (then `run` is the first seed's, `n` the
    examples of each seed, quality across seeds, speed and training their means); () for one run."""

    @property
    def n_seeds(self) -> int:
        """Runs this summary stands for: its seeds, or 1."""
        return len(self.seeds) or 1


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
    shares = device_seconds_by_row(rows)
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
        "eval_device_seconds_per_example": math.fsum(shares) / rows.num_rows,
    }


def device_seconds_by_row(rows: pa.Table) -> np.ndarray:
    """Each row's share of the evaluation's device time: its batch's wall time over the batch's rows.

    A batch runs on one device (with several devices each process times its own batches), so
    the shares of a run sum to the device-seconds its evaluation took, and the shares of one
    format's rows to what answering that format's questions took.
    """
    codes, _ = _codes(rows, "batch")
    counts = np.bincount(codes)
    seconds = np.full(len(counts), np.inf)
    # The batch's wall time is repeated on each of its rows; min() is the value speed_of takes.
    np.minimum.at(seconds, codes, rows.column("batch_seconds").to_numpy(zero_copy_only=False).astype(np.float64))
    return seconds[codes] / counts[codes]


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
        shares = device_seconds_by_row(rows) if rows.num_rows else np.empty(0)
        for kind, (codes, values) in sliced.items():
            within = codes[span]
            for code in sorted(np.unique(within), key=lambda c: values[c]):
                local = np.flatnonzero(within == code)
                name = values[code]
                speed = {"eval_device_seconds_per_example": math.fsum(shares[local]) / len(local)}
                quality = _quality(scores, local + run.start, f"{label}|{kind}={name}", seed)
                slices.append(Summary(run, len(local), quality, speed, slice_kind=kind, slice_value=name))
    return sorted(runs, key=_report_order), sorted(slices, key=_report_order)


def _report_order(summary: Summary) -> tuple:
    run = summary.run
    return (run.model, run.method, run.shots, run.decoding, run.name, run.digest, summary.slice_kind, summary.slice_value)


@dataclass(frozen=True)
class Pooled:
    """One summary per configuration (a run's own when it has one seed) and its slices."""

    configs: list[Summary]
    slices: list[Summary]
    notes: list[str]
    """Runs that look like seeds of one configuration but were not pooled, and why."""


def _mean_present(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return math.fsum(present) / len(present) if present else None


def _pool(members: Sequence[Summary]) -> Summary:
    """One summary over the seeds of a configuration: quality across seeds, other figures averaged."""
    first = members[0]
    quality = {m: across_seeds([s.quality[m].mean for s in members]) for m in first.quality}
    speed = {k: _mean_present([s.speed.get(k) for s in members]) for k in first.speed}
    training = {k: _mean_present([s.training.get(k) for s in members]) for k in first.training}
    return Summary(first.run, first.n, quality, speed, training, first.slice_kind, first.slice_value, tuple(members))


def _where(run: RunInfo) -> str:
    return run.ref.where(run.ref.keys.manifest)


def _seed_groups(runs: Sequence[Summary]) -> tuple[list[list[Summary]], list[str]]:
    """Runs grouped by configuration, each group one seed per run; notes for runs kept apart."""
    by_manifest: dict[str, list[Summary]] = {}
    for s in runs:
        by_manifest.setdefault(manifest_key(s.run.manifest), []).append(s)
    groups: list[list[Summary]] = []
    notes: list[str] = []
    for alike in by_manifest.values():
        by_config: dict[str, list[Summary]] = {}
        for s in alike:
            by_config.setdefault(config_id(s.run), []).append(s)
        if len(by_config) > 1:
            # Notes name each split-off group against the largest one (the configuration proper).
            first, *others = (members[0].run for members in sorted(by_config.values(), key=len, reverse=True))
            for other in others:
                if first.model_identity != other.model_identity:
                    why = "other model weights (provenance.json model)"
                else:
                    why = f"different data ({first.eval_set.difference(other.eval_set) or 'eval file hashes differ'})"
                notes.append(f"{_where(first)} and {_where(other)}: differ only in seeds but were evaluated with {why}; not pooled")
        for members in by_config.values():
            members.sort(key=lambda s: (seed_order(seeds_of(s.run.manifest)), s.run.name, s.run.digest))
            assignments = [seeds_of(s.run.manifest) for s in members]
            repeated = [s for s, seeds in zip(members, assignments) if assignments.count(seeds) > 1]
            if repeated:
                # The same configuration with the same seeds is the same evaluation stored twice
                # (under two names); pooling would count one seed twice.
                listing = ", ".join(_where(s.run) for s in repeated)
                notes.append(f"{listing}: the same configuration with the same seeds ({seed_label(seeds_of(repeated[0].run.manifest))}); not pooled, each kept as its own row")
                groups += [[s] for s in members]
            else:
                groups.append(members)
    return groups, notes


def pool_seeds(runs: Sequence[Summary], slices: Sequence[Summary]) -> Pooled:
    """One summary per configuration, seeds pooled, and the same per format and dataset."""
    groups, notes = _seed_groups(runs)
    slices_of: dict[int, list[Summary]] = {}
    for part in slices:
        slices_of.setdefault(id(part.run), []).append(part)
    configs: list[Summary] = []
    config_slices: list[Summary] = []
    for members in groups:
        if len(members) == 1:
            configs.append(members[0])
            config_slices += slices_of.get(id(members[0].run), [])
            continue
        configs.append(_pool(members))
        cells: dict[tuple[str, str], list[Summary]] = {}
        for member in members:
            for part in slices_of.get(id(member.run), []):
                cells.setdefault((part.slice_kind, part.slice_value), []).append(part)
        config_slices += [_pool(parts) for parts in cells.values()]
    return Pooled(sorted(configs, key=_report_order), sorted(config_slices, key=_report_order), notes)


def varying_seeds(summary: Summary) -> tuple[str, ...]:
    """The seed fields whose values differ among a pooled summary's runs (all it holds for one run)."""
    assignments = [seeds_of(s.run.manifest) for s in summary.seeds] or [seeds_of(summary.run.manifest)]
    varying = tuple(name for name in SEED_FIELDS if len({repr(a.get(name)) for a in assignments}) > 1)
    return varying or tuple(assignments[0])


def headline_metric(metrics: Sequence[str]) -> str | None:
    """The metric figures and one-number tables lead with.

    `unifiedqa` (each dataset judged as UnifiedQA's evaluation code judges it) when it is scored,
    else exact match, else the first metric: one number comparable across every format.
    """
    for preferred in ("unifiedqa", "exact_match"):
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
    seeds = seeds_of(run.manifest)
    row["config"] = config_id(run)
    for name in SEED_FIELDS:
        row[name.replace(".", "_")] = seeds.get(name)
    row["run"], row["digest"] = run.name, run.digest
    return row


def config_row(summary: Summary, metrics: Sequence[str]) -> dict[str, Any]:
    """A flat row of a configuration: identity, seeds, metric means, then each metric's sd and
    t-interval across seeds (empty for one seed), speed and training means, the runs."""
    run = summary.run
    row: dict[str, Any] = {"model": run.model, "method": run.method, "shots": run.shots, "decoding": run.decoding}
    if summary.slice_kind:
        row["slice_kind"], row["slice"] = summary.slice_kind, summary.slice_value
    row["n_seeds"], row["n"] = summary.n_seeds, summary.n
    for m in metrics:
        row[m] = summary.quality[m].mean
    for m in metrics:
        estimate = summary.quality[m]
        seeded = estimate.over == "seeds"
        row[f"{m}_sd"] = estimate.sd if seeded else None
        row[f"{m}_ci95_low"], row[f"{m}_ci95_high"] = (estimate.low, estimate.high) if seeded else (None, None)
    row.update(summary.training)
    row.update(summary.speed)
    members = summary.seeds or (summary,)
    row["config"] = config_id(run)
    row["seeds"] = "; ".join(seed_label(seeds_of(s.run.manifest)) for s in members)
    row["runs"] = " ".join(f"{s.run.name}/{s.run.digest}" for s in members)
    return row

"""Per-example scores for every row, with the runner's own scorers.

Scoring is pure Python (regexes, rouge-score), the slowest step of a report over many runs. Two
things keep it affordable without touching the scorers:

- A scorer sees only a `runner.scoring.Scored` record (dataset, format, prediction, references,
  options), so rows that agree on those fields get equal scores. Runs over one eval set repeat
  the same (question, answer) pairs again and again — "yes", the right option, the same wrong
  span — and each distinct one is scored once, then broadcast back to its rows.
- Large batches of distinct inputs are split across worker processes.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from runner.console import progress
from runner.score import score_rows
from runner.scoring import SCORERS

SCORED_COLUMNS = ("dataset", "format", "prediction", "references", "options")
"""Shard columns a scorer can see (the fields of runner.scoring.Scored)."""

RANKED_COLUMNS = ("choices", "choice_logprobs")
"""Columns of log-likelihood rows that `acc` and `acc_norm` read; scored inputs include them
whenever the shard schema has them (older schemas do not, and then no row is ranked)."""


def scored_columns(table: pa.Table) -> list[str]:
    """The columns that decide a row's scores, of those the table holds."""
    return list(SCORED_COLUMNS) + [name for name in RANKED_COLUMNS if name in table.column_names]

# Below this many distinct inputs, starting worker processes (~1 s each, they import the
# scorers afresh) costs more than it saves: 20,000 inputs take ~2 s on one core with EM and F1.
PARALLEL_MIN = 20_000

# Control characters that do not occur in answers separate the parts of the dedup key.
_LIST_SEP, _FIELD_SEP = "\x1e", "\x1f"


def metric_order(requested: Sequence[str] | None, manifest_metrics: Iterable[Sequence[str]]) -> list[str]:
    """The metrics to score: `requested`, else every registered scorer; the runs' own first.

    The runs' manifests list the metrics their authors chose (exact_match, f1 by default), so
    those lead every table; the other registered scorers follow in registry order.
    """
    known = list(SCORERS.discover())
    if requested:
        unknown = [m for m in requested if m not in known]
        if unknown:
            from runner.errors import UserError

            raise UserError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(known)}")
        chosen = list(dict.fromkeys(requested))
    else:
        chosen = known
    first = [m for metrics in manifest_metrics for m in metrics if m in chosen]
    return list(dict.fromkeys(first + chosen))


def distinct_inputs(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(code of each row's scored input, index of the first row holding each code)."""
    parts = []
    for name in scored_columns(table):
        column = table.column(name)
        if pa.types.is_list(column.type):
            if not pa.types.is_string(column.type.value_type):
                # Log-probabilities: Arrow writes floats in their shortest round-trip form, so
                # distinct values stay distinct keys.
                column = pc.cast(column, pa.list_(pa.string()))
            column = pc.binary_join(column, _LIST_SEP)
        # Null and empty agree: Scored.from_row reads a missing options list as ().
        parts.append(pc.fill_null(column, ""))
    key = pc.binary_join_element_wise(*parts, _FIELD_SEP).combine_chunks()
    codes = pc.dictionary_encode(key).indices.to_numpy(zero_copy_only=False)
    _, first = np.unique(codes, return_index=True)
    return codes, first


def _score_chunk(rows: list[dict], metrics: list[str]) -> list[list[float | None]]:
    """Scores of `rows` as lists in `metrics` order (runs in worker processes too)."""
    return [[s[m] for m in metrics] for s in score_rows(rows, metrics)]


def _score_distinct(rows: list[dict], metrics: list[str], jobs: int, show_progress: bool) -> np.ndarray:
    parallel = jobs > 1 and len(rows) >= PARALLEL_MIN
    # Several chunks per worker even out chunks whose answers are slower to score, and give the
    # progress bar something to count.
    size = max(1, -(-len(rows) // (jobs * 4 if parallel else 20)))
    chunks = [rows[i : i + size] for i in range(0, len(rows), size)]
    scored: list[list[float | None]] = []
    with progress("scoring distinct answers", len(rows), stderr=True, transient=True, enabled=show_progress) as ticker:
        if parallel:
            # spawn, not fork: the parent holds Arrow's thread pools, which fork would copy mid-state.
            with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
                for part in pool.map(_score_chunk, chunks, [metrics] * len(chunks)):
                    scored += part
                    ticker.advance(len(part))
        else:
            for chunk in chunks:
                scored += _score_chunk(chunk, metrics)
                ticker.advance(len(chunk))
    # NaN marks "no score" inside numpy only; tables and files get null (see with_scores).
    return np.array([[np.nan if v is None else v for v in s] for s in scored], dtype=np.float64).reshape(len(rows), len(metrics))


def score_table(table: pa.Table, metrics: Sequence[str], jobs: int | None = None, show_progress: bool = True) -> dict[str, np.ndarray]:
    """Metric name → per-row float64 scores (NaN where the scorer returned None)."""
    metrics = list(metrics)
    if table.num_rows == 0 or not metrics:
        return {m: np.empty(0) for m in metrics}
    codes, first = distinct_inputs(table)
    rows = table.select(scored_columns(table)).take(pa.array(first)).to_pylist()
    distinct = _score_distinct(rows, metrics, jobs if jobs is not None else (os.cpu_count() or 1), show_progress)
    return {m: distinct[codes, i] for i, m in enumerate(metrics)}


def with_scores(table: pa.Table, scores: dict[str, np.ndarray]) -> pa.Table:
    """The table with one float64 column per metric; a missing score is null."""
    for name, values in scores.items():
        table = table.append_column(name, pa.array(values, mask=np.isnan(values), type=pa.float64()))
    return table

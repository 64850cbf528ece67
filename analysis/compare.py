"""`python -m analysis compare RUN_A RUN_B`: is A better than B on the examples both answered?

Each RUN is a run folder (`runs/<name>/<digest>`, a path or URI), or with `--source` a run name,
`name/digest` or digest within that storage. Only examples both runs answered count, paired by id.
For every metric: the mean difference with a paired bootstrap CI and p-value. For correctness
(one metric against a threshold): McNemar's exact test on the discordant pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from analysis.aggregate import headline_metric
from analysis.load import UNFINISHED, RunInfo, RunRef, find_runs, load_runs
from analysis.scores import metric_order, score_table
from analysis.stats import RESAMPLES, McNemar, PairedDifference, mcnemar, paired_bootstrap
from runner.errors import UserError
from runner.paths import RunKeys
from runner.scoring import SCORERS
from runner.storage import open_store

DEFAULT_THRESHOLD = 1.0
"""An example is correct when its score reaches this: with exact match, an exact answer; with the
official metric, a fully right answer under its dataset's measure (F1 = 1 on SQuAD)."""


@dataclass(frozen=True)
class Comparison:
    a: RunInfo
    b: RunInfo
    n_a: int
    n_b: int
    shared: int
    differences: dict[str, PairedDifference]
    mcnemar: McNemar
    correct_rule: str
    resamples: int = RESAMPLES


def _run_location(argument: str) -> RunRef:
    root, _, digest = argument.rstrip("/").rpartition("/")
    root, _, name = root.rpartition("/")
    if not name or not digest:
        raise UserError(f"{argument}: not a run folder like runs/<name>/<digest> (or pass --source STORAGE and a run name)")
    return RunRef(open_store(root or "."), "", RunKeys(name, digest))


def _in_source(argument: str, source: str) -> RunRef:
    refs, unfinished = find_runs(open_store(source))
    wanted = argument.strip("/")
    matches = [r for r in refs if wanted in (r.keys.name, r.keys.digest, r.keys.prefix, r.key(r.keys.prefix))]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise UserError(f"{argument}: several completed runs match in {source}: {', '.join(r.key(r.keys.prefix) for r in matches)}; name one as name/digest")
    unfinished_match = [s for s in unfinished if s.location.rstrip("/").endswith(wanted) or f"/{wanted}/" in s.location]
    if unfinished_match:
        raise UserError(f"{unfinished_match[0]}")
    raise UserError(f"{argument}: no completed run of that name or digest in {source}")


def resolve(argument: str, source: str | None) -> RunRef:
    """The completed run an argument names; UserError when there is none (or several)."""
    ref = _in_source(argument, source) if source else _run_location(argument)
    if not ref.store.exists(ref.key(ref.keys.success)):
        what = "no run" if not ref.store.exists(ref.key(ref.keys.manifest)) else UNFINISHED
        raise UserError(f"{ref.where()}: {what}")
    return ref


def _correct(values: np.ndarray, metric: str, threshold: float) -> np.ndarray:
    if SCORERS.get(metric).higher_is_better:
        return values >= threshold
    return values <= threshold


def _shared_rows(table: pa.Table, a: RunInfo, b: RunInfo) -> tuple[np.ndarray, np.ndarray]:
    """Row numbers in `table` of the examples both runs answered, paired (A's, B's)."""
    ids_a = table.column("id").slice(a.start, a.stop - a.start)
    ids_b = table.column("id").slice(b.start, b.stop - b.start)
    found = pc.index_in(ids_b, value_set=ids_a.combine_chunks())
    in_b = np.flatnonzero(pc.is_valid(found).to_numpy(zero_copy_only=False))
    position = pc.fill_null(found, 0).to_numpy(zero_copy_only=False)
    if len(in_b) == 0:
        raise UserError(
            f"{a.ref.where()} and {b.ref.where()} share no example ids: they were evaluated on different data "
            f"({a.eval_set.difference(b.eval_set) or 'different example ids'})"
        )
    return position[in_b].astype(np.int64) + a.start, in_b + b.start


def _check_same_data(table: pa.Table, a: RunInfo, b: RunInfo, rows_a: np.ndarray, rows_b: np.ndarray) -> None:
    """UserError when the runs' provenance or shared examples say the data differ."""
    conflict = a.eval_set.data_conflict(b.eval_set)
    if conflict:
        raise UserError(f"{a.ref.where(a.ref.keys.provenance)} and {b.ref.where(b.ref.keys.provenance)}: {conflict}")
    references = pc.binary_join(table.column("references"), "\x1e")
    same = pc.equal(references.take(pa.array(rows_a)), references.take(pa.array(rows_b))).to_numpy(zero_copy_only=False)
    if not same.all():
        first = int(rows_a[np.flatnonzero(~same)[0]])
        example = table.column("id")[first].as_py()
        raise UserError(
            f"{a.ref.where(a.ref.keys.manifest)} and {b.ref.where(b.ref.keys.manifest)}: example {example} has different "
            f"reference answers in the two runs ({int((~same).sum())} such examples): they were evaluated on different data"
        )


def compare(
    run_a: str, run_b: str, source: str | None = None, metrics: Sequence[str] | None = None, correct_metric: str | None = None,
    threshold: float | None = None, seed: int = 0, jobs: int | None = None,
) -> Comparison:
    """Paired comparison of two completed runs on the examples both answered."""
    threshold = DEFAULT_THRESHOLD if threshold is None else threshold
    refs = [resolve(run_a, source), resolve(run_b, source)]
    if refs[0].where() == refs[1].where():
        raise UserError(f"{refs[0].where()}: RUN_A and RUN_B are the same run")
    loaded = load_runs(refs)
    if loaded.skipped:
        raise UserError("\n".join(f"{s}" for s in loaded.skipped))
    a, b = loaded.runs
    rows_a, rows_b = _shared_rows(loaded.table, a, b)
    _check_same_data(loaded.table, a, b, rows_a, rows_b)
    chosen = metric_order(metrics, (r.manifest.get("eval", {}).get("metrics", ()) for r in loaded.runs))
    correct_metric = correct_metric or headline_metric(chosen)
    if correct_metric not in chosen:
        chosen.append(metric_order([correct_metric], ())[0])
    # Only the shared rows are scored: the rest cannot enter a paired statistic.
    shared = loaded.table.take(pa.array(np.concatenate([rows_a, rows_b])))
    scores = score_table(shared, chosen, jobs)
    n = len(rows_a)
    label = f"{a.name}/{a.digest} vs {b.name}/{b.digest}"
    differences = {m: paired_bootstrap(v[:n], v[n:], f"{label}|{m}", seed) for m, v in scores.items()}
    values = scores[correct_metric]
    scored = ~np.isnan(values[:n]) & ~np.isnan(values[n:])
    test = mcnemar(_correct(values[:n][scored], correct_metric, threshold), _correct(values[n:][scored], correct_metric, threshold))
    direction = ">=" if SCORERS.get(correct_metric).higher_is_better else "<="
    return Comparison(a, b, a.stop - a.start, b.stop - b.start, n, differences, test, f"{correct_metric} {direction} {threshold:g}")

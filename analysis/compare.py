"""`python -m analysis compare RUN_A RUN_B`: is A better than B on the examples both answered?

Each RUN is a run folder (`runs/<name>/<digest>`, a path or URI), or with `--source` a run name,
`name/digest` or digest within that storage. Only examples both runs answered count, paired by id.
For every metric: the mean difference with a paired bootstrap CI and p-value. For correctness
(one metric against a threshold): McNemar's exact test on the discordant pairs. The manifest
fields in which A and B differ are listed; runs that differ only in seeds are called seed twins.

`--seeds` compares the configurations of RUN_A and RUN_B instead: every completed run of each
(the same manifest apart from seeds, model weights and data, analysis/seeds.py) in the storage,
paired by seed — the seed fields both configurations hold — each pair as above, and over all
seeds: a paired bootstrap over the examples every pair answered, each example's difference
averaged over the seeds (examples resampled, seeds held fixed), and the mean, sd and t-interval of
the per-seed differences (seed-to-seed variation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from analysis.aggregate import headline_metric
from analysis.load import UNFINISHED, Loaded, RunInfo, RunRef, find_runs, load_runs, read_manifest
from analysis.scores import metric_order, score_table
from analysis.seeds import SEED_FIELDS, config_id, differing_fields, manifest_key, seed_label, seed_order, seed_twins, seeds_of
from analysis.stats import RESAMPLES, Estimate, McNemar, PairedDifference, across_seeds, mcnemar, paired_bootstrap
from runner.errors import UserError
from runner.paths import RunKeys
from runner.scoring import SCORERS
from runner.storage import open_store

DEFAULT_THRESHOLD = 1.0
"""An example is correct when its score reaches this: with exact match, an exact answer; with
`unifiedqa`, a fully right answer under its dataset's UnifiedQA rule (F1 = 1 on SQuAD)."""


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
    differing: tuple[tuple[str, Any, Any], ...] = ()
    """(manifest field, A's value, B's value) for each defining field that differs, seeds included."""
    resamples: int = RESAMPLES

    @property
    def seed_twins(self) -> bool:
        """A and B differ only in seeds: their difference is seed-to-seed variation."""
        return seed_twins(self.differing)


@dataclass(frozen=True)
class SeedPair:
    """The runs of one seed in each configuration, compared on the examples both answered."""

    seed: str
    a: RunInfo
    b: RunInfo
    shared: int
    differences: dict[str, PairedDifference]
    mcnemar: McNemar


@dataclass(frozen=True)
class SeedComparison:
    """Two configurations compared seed by seed, and over their seeds."""

    a: RunInfo
    """The run named as RUN_A; its configuration's runs are the A side."""
    b: RunInfo
    differing: tuple[tuple[str, Any, Any], ...]
    """Fields in which the two configurations differ (seeds excluded)."""
    paired_on: tuple[str, ...]
    """Seed fields both configurations hold: runs with equal values there are paired."""
    pairs: tuple[SeedPair, ...]
    shared: int
    """Examples every pair answered: the set the over-seeds statistics are computed on."""
    over_seeds: dict[str, PairedDifference]
    """Paired bootstrap over the shared examples of A − B averaged over the seeds."""
    across_seeds: dict[str, Estimate]
    """Mean, sd and t-interval of the per-seed mean differences."""
    notes: tuple[str, ...]
    """Runs left unpaired or left out, and why."""
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


def _metrics(runs: Sequence[RunInfo], metrics: Sequence[str] | None, correct_metric: str | None) -> tuple[list[str], str]:
    """The metrics to compare and the one that defines a correct answer (always among them)."""
    chosen = metric_order(metrics, (r.manifest.get("eval", {}).get("metrics", ()) for r in runs))
    correct_metric = correct_metric or headline_metric(chosen)
    if correct_metric not in chosen:
        chosen.append(metric_order([correct_metric], ())[0])
    return chosen, correct_metric


def _rule(correct_metric: str, threshold: float) -> str:
    direction = ">=" if SCORERS.get(correct_metric).higher_is_better else "<="
    return f"{correct_metric} {direction} {threshold:g}"


def _paired(
    scores: dict[str, np.ndarray], n: int, label: str, seed: int, correct_metric: str, threshold: float
) -> tuple[dict[str, PairedDifference], McNemar]:
    """Paired bootstrap per metric and McNemar, over scores holding n rows of A then n of B."""
    differences = {m: paired_bootstrap(v[:n], v[n:2 * n], f"{label}|{m}", seed) for m, v in scores.items()}
    values = scores[correct_metric]
    scored = ~np.isnan(values[:n]) & ~np.isnan(values[n:2 * n])
    test = mcnemar(_correct(values[:n][scored], correct_metric, threshold), _correct(values[n:2 * n][scored], correct_metric, threshold))
    return differences, test


def _pair_label(a: RunInfo, b: RunInfo) -> str:
    return f"{a.name}/{a.digest} vs {b.name}/{b.digest}"


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
    chosen, correct_metric = _metrics(loaded.runs, metrics, correct_metric)
    # Only the shared rows are scored: the rest cannot enter a paired statistic.
    shared = loaded.table.take(pa.array(np.concatenate([rows_a, rows_b])))
    scores = score_table(shared, chosen, jobs)
    n = len(rows_a)
    differences, test = _paired(scores, n, _pair_label(a, b), seed, correct_metric, threshold)
    return Comparison(a, b, a.stop - a.start, b.stop - b.start, n, differences, test, _rule(correct_metric, threshold), differing_fields(a, b))


def _configuration_refs(ref: RunRef) -> list[RunRef]:
    """Completed runs in ref's storage whose manifest is ref's apart from seeds, ref first."""
    own = read_manifest(ref)
    if own is None:
        raise UserError(f"{ref.where(ref.keys.manifest)}: not a resolved manifest")
    key = manifest_key(own)
    found = [ref]
    refs, _ = find_runs(ref.store)
    for other in refs:
        if other.where() != ref.where():
            manifest = read_manifest(other)
            if manifest is not None and manifest_key(manifest) == key:
                found.append(other)
    return found


def _by_seed(named: RunInfo, members: Sequence[RunInfo], fields: tuple[str, ...], side: str, notes: list[str]) -> dict[tuple, RunInfo]:
    """One run per seed (the named run first), keyed by its values of `fields`."""
    keyed: dict[tuple, RunInfo] = {}
    for run in sorted(members, key=lambda r: (r is not named, r.name, r.digest)):
        seeds = seeds_of(run.manifest)
        key = tuple(seeds.get(f) for f in fields)
        if key in keyed:
            notes.append(f"{run.ref.where()}: the same seeds ({seed_label(seeds, fields)}) as {keyed[key].ref.where()} in {side}; left out")
            continue
        keyed[key] = run
    return keyed


def _side(named: RunInfo, refs: Sequence[RunRef], loaded: Loaded, notes: list[str]) -> list[RunInfo]:
    """The loaded runs of named's configuration: same manifest apart from seeds, same weights and data."""
    by_where = {r.ref.where(): r for r in loaded.runs}
    members = []
    for ref in refs:
        run = by_where.get(ref.where())
        if run is None:
            continue
        if config_id(run) != config_id(named):
            notes.append(f"{run.ref.where()}: differs from {named.ref.where()} only in seeds but was evaluated with other model weights or data; left out")
            continue
        members.append(run)
    return members


def compare_seeds(
    run_a: str, run_b: str, source: str | None = None, metrics: Sequence[str] | None = None, correct_metric: str | None = None,
    threshold: float | None = None, seed: int = 0, jobs: int | None = None,
) -> SeedComparison:
    """The configurations of two completed runs compared seed by seed and over their seeds."""
    threshold = DEFAULT_THRESHOLD if threshold is None else threshold
    named = [resolve(run_a, source), resolve(run_b, source)]
    if named[0].where() == named[1].where():
        raise UserError(f"{named[0].where()}: RUN_A and RUN_B are the same run")
    sides = [_configuration_refs(ref) for ref in named]
    if named[1].where() in {ref.where() for ref in sides[0]}:
        raise UserError(f"{named[0].where()} and {named[1].where()} are seeds of one configuration: compare them without --seeds")
    loaded = load_runs(sides[0] + sides[1])
    by_where = {r.ref.where(): r for r in loaded.runs}
    missing = [ref for ref in named if ref.where() not in by_where]
    if missing:
        reasons = [str(s) for s in loaded.skipped if any(s.location.startswith(ref.where()) for ref in missing)]
        raise UserError("\n".join(reasons or [f"{ref.where()}: could not be read" for ref in missing]))
    a, b = (by_where[ref.where()] for ref in named)
    notes = [f"left out: {s}" for s in loaded.skipped]
    fields = tuple(f for f in SEED_FIELDS if f in seeds_of(a.manifest) and f in seeds_of(b.manifest))
    keyed_a = _by_seed(a, _side(a, sides[0], loaded, notes), fields, "A", notes)
    keyed_b = _by_seed(b, _side(b, sides[1], loaded, notes), fields, "B", notes)
    for mine, theirs, side in ((keyed_a, keyed_b, "A"), (keyed_b, keyed_a, "B")):
        for key in mine.keys() - theirs.keys():
            notes.append(f"{mine[key].ref.where()}: seed {seed_label(dict(zip(fields, key)), fields)} only in {side}; unpaired")
    keys = sorted(keyed_a.keys() & keyed_b.keys(), key=lambda k: seed_order(dict(zip(fields, k))))
    if not keys:
        raise UserError(f"{a.ref.where()} and {b.ref.where()}: their configurations share no seed ({', '.join(fields) or 'no seed field in common'})")
    chosen, correct_metric = _metrics([keyed_a[k] for k in keys] + [keyed_b[k] for k in keys], metrics, correct_metric)
    table = loaded.table
    rows = []
    for key in keys:
        rows_a, rows_b = _shared_rows(table, keyed_a[key], keyed_b[key])
        _check_same_data(table, keyed_a[key], keyed_b[key], rows_a, rows_b)
        rows.append((rows_a, rows_b))
    # Each pair's rows, A's then B's, scored together once (equal inputs are scored once anyway).
    offsets = np.cumsum([0] + [2 * len(ra) for ra, _ in rows])
    scores = score_table(table.take(pa.array(np.concatenate([np.concatenate(r) for r in rows]))), chosen, jobs)
    pairs = []
    for key, (rows_a, rows_b), start in zip(keys, rows, offsets):
        part = {m: v[start : start + 2 * len(rows_a)] for m, v in scores.items()}
        differences, test = _paired(part, len(rows_a), _pair_label(keyed_a[key], keyed_b[key]), seed, correct_metric, threshold)
        pairs.append(SeedPair(seed_label(dict(zip(fields, key)), fields), keyed_a[key], keyed_b[key], len(rows_a), differences, test))
    # Over seeds: the examples every pair answered, in the first pair's order; an example's A (B)
    # score is its mean over the seeds, so resampling an example keeps all its seeds together.
    ids = table.column("id").to_pylist()
    positions = [{ids[row]: i for i, row in enumerate(rows_a)} for rows_a, _ in rows]
    common = [example for example in positions[0] if all(example in p for p in positions[1:])]
    over: dict[str, PairedDifference] = {}
    across: dict[str, Estimate] = {}
    label = f"{a.name}/{a.digest} seeds vs {b.name}/{b.digest} seeds"
    for m, v in scores.items():
        per_a = np.array([[v[start + p[e]] for e in common] for p, start in zip(positions, offsets)])
        per_b = np.array([[v[start + len(ra) + p[e]] for e in common] for p, start, (ra, _) in zip(positions, offsets, rows)])
        over[m] = paired_bootstrap(per_a.mean(axis=0), per_b.mean(axis=0), f"{label}|{m}", seed)
        across[m] = across_seeds([pair.differences[m].difference for pair in pairs])
    differing = tuple(d for d in differing_fields(a, b) if d[0] not in SEED_FIELDS)
    return SeedComparison(a, b, differing, fields, tuple(pairs), len(common), over, across, tuple(notes), _rule(correct_metric, threshold))

"""Completed runs only (`_SUCCESS` present), every shard verified, all rows in one Arrow table.

A run with any unusable file is left out whole, never in part: a run missing a shard would
report a mean over a different example set under the same name. Each left-out run is recorded
as a `Skipped` naming the file and the problem, so the report can list it; nothing is deleted.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import yaml

from analysis.verify import TARGET_SCHEMA, ShardProblem, parse_checksums, read_shard
from runner.console import progress
from runner.paths import CHECKSUMS_FILE, MANIFEST_FILE, PROVENANCE_FILE, SUCCESS_FILE, TRAININGS, RunKeys, is_quarantined, shard_index
from runner.storage import CorruptObject, Store
from runner.storage_uri import redact

# The runner's digest is 12 hex digits; a looser pattern still keeps adapter/ or checkpoint files
# that happen to be named manifest.yaml from passing for run folders.
_DIGEST = re.compile(r"^[0-9a-f]{6,64}$")

UNFINISHED = f"no {SUCCESS_FILE}: the run did not finish (or is still running)"
"""Why a run folder without its completion marker is left out."""

IDENTITY_COLUMNS = ("run", "digest", "model", "method", "shots", "decoding")
"""Manifest fields copied onto every example row, in this order, before the shard columns."""

# Reading and decoding shards releases the GIL (file I/O, zstd, Arrow); four threads keep two
# cores busy while one waits on storage.
READ_THREADS = 4


@dataclass(frozen=True)
class Skipped:
    """A file or run folder the report could not use, and why."""

    location: str
    reason: str
    repair: str | None = None
    """The command that repairs a completed run left out for damage; None for an unfinished run."""

    def __str__(self) -> str:
        return f"{self.location}: {self.reason}" + (f" — to repair: {self.repair}" if self.repair else "")


def repair_command(ref: RunRef) -> str:
    """What brings a damaged run back: quarantine the damage, then let the manifest redo it."""
    root = getattr(ref.store, "root", None)
    storage = str(root) if root is not None else ref.store.uri
    if ref.base:
        storage = f"{storage.rstrip('/')}/{ref.base}"
    return f"python -m runner verify {storage} --repair, then rerun the manifest of {ref.keys.name} (python -m runner run MANIFEST)"


@dataclass(frozen=True)
class RunRef:
    """A run folder found in a store: `<base>/<name>/<digest>/`."""

    store: Store
    base: str
    """Key prefix above the run's name ("" when the store root holds run names directly)."""
    keys: RunKeys

    def key(self, run_key: str) -> str:
        """A store key for one of the run's artifact keys."""
        return f"{self.base}/{run_key}" if self.base else run_key

    def where(self, run_key: str = "") -> str:
        """A location people can open: a file path for local stores, a URI otherwise."""
        key = self.key(run_key or self.keys.prefix)
        root = getattr(self.store, "root", None)
        return str(root / key) if root is not None else redact(f"{self.store.uri.rstrip('/')}/{key}")


@dataclass(frozen=True)
class EvalSet:
    """What a run was evaluated on, as far as its manifest and provenance say."""

    datasets: tuple[str, ...]
    split: str
    max_examples: int | None
    data_sha256: tuple[tuple[str, str], ...]
    """(file, sha256) of each evaluated data file recorded in provenance.json; () if none."""
    sample: str | None = None
    """How a capped eval set was chosen: `first`, `random seed N`; None when every example was evaluated."""

    def difference(self, other: EvalSet) -> str | None:
        """What makes two eval sets differ, in manifest terms; None when they are the same."""
        if self.datasets != other.datasets:
            return f"data.datasets {', '.join(self.datasets)} vs {', '.join(other.datasets)}"
        if self.split != other.split:
            return f"data.eval_split {self.split} vs {other.split}"
        if self.max_examples != other.max_examples:
            return f"data.max_eval_examples {self.max_examples} vs {other.max_examples}"
        if self.sample != other.sample:
            return f"data.eval_sample {self.sample} vs {other.sample}"
        return self.data_conflict(other)

    def data_conflict(self, other: EvalSet) -> str | None:
        """A data file both runs recorded with different contents, or None."""
        theirs = dict(other.data_sha256)
        for name, digest in self.data_sha256:
            if name in theirs and theirs[name] != digest:
                return f"{name} has sha256 {digest[:12]}… vs {theirs[name][:12]}… ({PROVENANCE_FILE}): different data"
        return None


@dataclass(frozen=True)
class RunInfo:
    """One loaded run: its identity, facts from its files, and its rows' slice of the table."""

    ref: RunRef
    manifest: dict[str, Any]
    metrics: dict[str, Any]
    """metrics.json; its `train` block holds measurements no shard can reproduce."""
    model: str
    method: str
    shots: int
    decoding: str
    eval_set: EvalSet
    start: int
    """First row of this run in the combined table; its rows are contiguous."""
    stop: int
    model_identity: dict[str, Any] = field(default_factory=dict)
    """What the weights were (provenance.json `model`: hub commit or file hashes); {} if unrecorded."""
    prompt_format: str | None = None
    """The rows' `prompt_format` ('chat' | 'plain'; several joined by '+'); None when the shards predate the column."""
    protocol: str | None = None
    """The rows' `protocol` ('generate' | 'loglikelihood'); None when the shards predate the column."""
    train_eval_overlap: dict[str, Any] = field(default_factory=dict)
    """provenance.json `train_eval_overlap`: per dataset, examples `evaluated` and `in_train`; {} if unrecorded."""

    @property
    def name(self) -> str:
        return self.ref.keys.name

    @property
    def digest(self) -> str:
        return self.ref.keys.digest

    @property
    def train(self) -> dict[str, Any]:
        """The training measurements, {} for a run that trained nothing."""
        return self.metrics.get("train") or {}

    @property
    def training(self) -> str | None:
        """Digest of the training stage whose weights were evaluated (metrics.json `training`,
        else manifest.yaml `stages.training`); None for a run that trained nothing."""
        stages = self.manifest.get("stages")
        recorded = self.metrics.get("training") or (stages.get("training") if isinstance(stages, dict) else None)
        return recorded if isinstance(recorded, str) and recorded else None

    @property
    def devices(self) -> int:
        """Devices the manifest ran on (`devices`, 1 when absent): training occupies all of them."""
        devices = self.manifest.get("devices", 1)
        return devices if isinstance(devices, int) and devices >= 1 else 1

    @property
    def label(self) -> str:
        """method · k-shot · decoding, the name of a configuration within one model; then the
        prompt format and a protocol other than `generate`, when the shards record them."""
        extras = [self.prompt_format] if self.prompt_format else []
        if self.protocol and self.protocol != "generate":
            extras.append(self.protocol)
        return " · ".join([self.method, f"{self.shots}-shot", self.decoding, *extras])


@dataclass(frozen=True)
class Loaded:
    """Every usable run's rows in one table, plus what was left out."""

    table: pa.Table
    runs: tuple[RunInfo, ...]
    skipped: tuple[Skipped, ...]


def model_label(model: dict[str, Any]) -> str:
    """A short name for the model block of a resolved manifest."""
    if model.get("hub"):
        return model["hub"] + (f"@{model['revision']}" if model.get("revision") else "")
    if model.get("package"):
        return model["package"]
    return str(model.get("path", "?")).rstrip("/").rsplit("/", 1)[-1]


def find_runs(store: Store) -> tuple[list[RunRef], list[Skipped]]:
    """Completed run folders under the store root, and the unfinished ones as Skipped."""
    folders: dict[tuple[str, str, str], set[str]] = {}
    for key in store.list(""):
        parts = key.split("/")
        if is_quarantined(key):
            continue  # damage moved aside by runner verify or a run; never a run of its own
        # trainings/<digest>/ holds a _SUCCESS too, but it is a training stage that runs share,
        # not a run: it has no manifest or predictions of its own.
        if len(parts) >= 3 and parts[-1] in (SUCCESS_FILE, MANIFEST_FILE) and _DIGEST.match(parts[-2]) and parts[-3] != TRAININGS:
            folders.setdefault(("/".join(parts[:-3]), parts[-3], parts[-2]), set()).add(parts[-1])
    complete, skipped = [], []
    for (base, name, digest), files in sorted(folders.items()):
        ref = RunRef(store, base, RunKeys(name, digest))
        if SUCCESS_FILE in files:
            complete.append(ref)
        else:
            skipped.append(Skipped(ref.where(), UNFINISHED))
    return complete, skipped


class _RunProblem(Exception):
    def __init__(self, location: str, reason: str):
        super().__init__(reason)
        self.location, self.reason = location, reason


def _read_json(ref: RunRef, run_key: str, required: bool = True) -> dict[str, Any]:
    if not ref.store.exists(ref.key(run_key)):
        if required:
            raise _RunProblem(ref.where(run_key), "missing")
        return {}
    try:
        value = json.loads(ref.store.read_bytes(ref.key(run_key)))
    except ValueError as exc:
        raise _RunProblem(ref.where(run_key), f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise _RunProblem(ref.where(run_key), "not a JSON object")
    return value


def read_manifest(ref: RunRef) -> dict[str, Any] | None:
    """A completed run's resolved manifest, or None when it is missing or unusable."""
    try:
        return _read_manifest(ref)
    except (_RunProblem, CorruptObject):
        return None


def _read_manifest(ref: RunRef) -> dict[str, Any]:
    where = ref.where(ref.keys.manifest)
    if not ref.store.exists(ref.key(ref.keys.manifest)):
        raise _RunProblem(where, "missing")
    try:
        manifest = yaml.safe_load(ref.store.read_bytes(ref.key(ref.keys.manifest)))
    except yaml.YAMLError as exc:
        raise _RunProblem(where, f"not valid YAML: {exc}") from None
    if not isinstance(manifest, dict):
        raise _RunProblem(where, "not a resolved manifest (expected a mapping)")
    for section, key in (("model", None), ("method", "kind"), ("icl", "shots"), ("decoding", "kind"), ("data", "datasets")):
        block = manifest.get(section)
        if not isinstance(block, dict) or (key is not None and key not in block):
            raise _RunProblem(where, f"not a resolved manifest: no {section}{'.' + key if key else ''}")
    return manifest


def _eval_set(manifest: dict[str, Any], provenance: dict[str, Any]) -> EvalSet:
    data = manifest["data"]
    split = data.get("eval_split", "dev")
    datasets = tuple(sorted(data["datasets"]))
    recorded = provenance.get("data") or {}
    wanted = {f"{d}/{split}.tsv" for d in datasets}
    cap = data.get("max_eval_examples")
    return EvalSet(datasets, split, cap, tuple(sorted((k, v) for k, v in recorded.items() if k in wanted)), _sample_label(data) if cap else None)


def _sample_label(data: dict[str, Any]) -> str:
    """How a capped eval set was drawn; runs stored before `data.eval_sample` existed took the first N."""
    if data.get("eval_sample", "first") == "first":
        return "first"
    return f"random seed {data.get('eval_sample_seed', 0)}"


@dataclass
class _Pending:
    ref: RunRef
    manifest: dict[str, Any]
    metrics: dict[str, Any]
    provenance: dict[str, Any]
    shard_keys: list[str]
    expected: dict[str, str | None]


def _file_name(key: str) -> str:
    return key.rsplit("/", 1)[-1]


def _plan(ref: RunRef) -> _Pending:
    manifest = _read_manifest(ref)
    metrics = _read_json(ref, ref.keys.metrics)
    provenance = _read_json(ref, ref.keys.provenance, required=False)
    names = {_file_name(key) for key in ref.store.list(ref.key(ref.keys.predictions))}
    indices = sorted(i for i in (shard_index(n) for n in names) if i is not None)
    if not indices:
        raise _RunProblem(ref.where(ref.keys.predictions), "no prediction shards")
    gaps = sorted(set(range(indices[-1] + 1)) - set(indices))
    if gaps:
        raise _RunProblem(ref.where(ref.keys.shard(gaps[0])), f"missing: shards 0-{indices[-1]} expected, {len(gaps)} absent")
    checksums: dict[str, str] | None = None
    if CHECKSUMS_FILE in names:
        listing_key = ref.keys.checksums
        try:
            checksums = parse_checksums(ref.store.read_bytes(ref.key(listing_key)))
        except ShardProblem as exc:
            raise _RunProblem(ref.where(listing_key), str(exc)) from None
        unlisted = [i for i in indices if _file_name(ref.keys.shard(i)) not in checksums]
        if unlisted:
            raise _RunProblem(ref.where(ref.keys.shard(unlisted[0])), f"not listed in {CHECKSUMS_FILE}")
        absent = sorted(set(checksums) - names)
        if absent:
            raise _RunProblem(ref.where(f"{ref.keys.predictions}/{absent[0]}"), f"listed in {CHECKSUMS_FILE} but missing")
    keys = [ref.keys.shard(i) for i in indices]
    expected = {key: (checksums or {}).get(_file_name(key)) for key in keys}
    return _Pending(ref, manifest, metrics, provenance, keys, expected)


def _read(pending: _Pending, key: str) -> pa.Table | Skipped:
    repair = repair_command(pending.ref)
    try:
        data = pending.ref.store.read_bytes(pending.ref.key(key))
    except CorruptObject as exc:
        # One bad object (checksum, foreign, a link out of storage) costs its run, never the report.
        return Skipped(pending.ref.where(key), str(exc), repair)
    try:
        return read_shard(data, pending.expected[key])
    except ShardProblem as exc:
        return Skipped(pending.ref.where(key), str(exc), repair)


def _assemble(pending: _Pending, tables: Sequence[pa.Table]) -> tuple[pa.Table, dict[str, Any]]:
    """The run's rows with its identity columns; raises _RunProblem for inconsistent content."""
    rows = pa.concat_tables(tables)
    ref, manifest = pending.ref, pending.manifest
    counted = (pending.metrics.get("generation") or {}).get("examples")
    if isinstance(counted, int) and counted != rows.num_rows:
        raise _RunProblem(ref.where(ref.keys.metrics), f"counts {counted} examples but the shards hold {rows.num_rows}")
    if pc.count_distinct(rows.column("id")).as_py() != rows.num_rows:
        raise _RunProblem(ref.where(ref.keys.predictions), "the same example id appears in more than one row")
    identity = {
        "run": ref.keys.name,
        "digest": ref.keys.digest,
        "model": model_label(manifest["model"]),
        "method": str(manifest["method"]["kind"]),
        "shots": int(manifest["icl"]["shots"]),
        "decoding": str(manifest["decoding"]["kind"]),
    }
    n = rows.num_rows
    columns = [pa.repeat(pa.scalar(identity[name], pa.int32() if name == "shots" else pa.string()), n) for name in IDENTITY_COLUMNS]
    table = pa.Table.from_arrays(columns + list(rows.columns), names=list(IDENTITY_COLUMNS) + rows.column_names)
    for name in ("prompt_format", "protocol"):
        identity[name] = _distinct_values(rows, name)
    return table, identity


def _distinct_values(rows: pa.Table, column: str) -> str | None:
    """The column's distinct non-null values joined by '+', or None (no such column, all null)."""
    if column not in rows.column_names:
        return None
    values = sorted(v for v in pc.unique(rows.column(column)).to_pylist() if v)
    return "+".join(values) or None


def empty_table() -> pa.Table:
    """The combined table's schema with no rows."""
    fields = [pa.field(name, pa.int32() if name == "shots" else pa.string()) for name in IDENTITY_COLUMNS]
    return pa.schema(fields + list(TARGET_SCHEMA)).empty_table()


def load_runs(refs: Sequence[RunRef], show_progress: bool = True) -> Loaded:
    """Verify and read the given completed runs; unusable ones become Skipped entries."""
    skipped: list[Skipped] = []
    pending: list[_Pending] = []
    for ref in refs:
        try:
            pending.append(_plan(ref))
        except _RunProblem as exc:
            skipped.append(Skipped(exc.location, exc.reason, repair_command(ref)))
        except CorruptObject as exc:
            skipped.append(Skipped(ref.where(), str(exc), repair_command(ref)))
    jobs = [(p, key) for p in pending for key in p.shard_keys]
    results: dict[tuple[int, str], pa.Table | Skipped] = {}
    reading = progress("reading shards", len(jobs), stderr=True, transient=True, enabled=show_progress)
    with reading as ticker, ThreadPoolExecutor(READ_THREADS) as pool:
        futures = {(id(p), key): pool.submit(_read, p, key) for p, key in jobs}
        for slot, future in futures.items():
            results[slot] = future.result()
            ticker.advance()
    runs: list[RunInfo] = []
    tables: list[pa.Table] = []
    start = 0
    for p in pending:
        parts = [results[(id(p), key)] for key in p.shard_keys]
        bad = [part for part in parts if isinstance(part, Skipped)]
        if bad:
            skipped.extend(bad)
            continue
        try:
            table, identity = _assemble(p, parts)
        except _RunProblem as exc:
            skipped.append(Skipped(exc.location, exc.reason, repair_command(p.ref)))
            continue
        eval_set = _eval_set(p.manifest, p.provenance)
        stop = start + table.num_rows
        model_identity = p.provenance.get("model") if isinstance(p.provenance.get("model"), dict) else {}
        overlap = p.provenance.get("train_eval_overlap") if isinstance(p.provenance.get("train_eval_overlap"), dict) else {}
        runs.append(
            RunInfo(
                p.ref, p.manifest, p.metrics, identity["model"], identity["method"], identity["shots"], identity["decoding"], eval_set, start, stop,
                model_identity, identity["prompt_format"], identity["protocol"], overlap,
            )
        )
        tables.append(table)
        start = stop
    table = pa.concat_tables(tables) if tables else empty_table()
    return Loaded(table, tuple(runs), tuple(skipped))


def not_held_out(runs: Sequence[RunInfo]) -> list[str]:
    """One line per run and dataset whose evaluated examples include inputs of the train split it read."""
    lines = []
    for run in runs:
        for dataset, counts in sorted(run.train_eval_overlap.items()):
            if isinstance(counts, dict) and counts.get("in_train"):
                lines.append(f"{run.name} ({run.digest}): {counts['in_train']} of {counts.get('evaluated', '?')} evaluated {dataset} examples")
    return lines

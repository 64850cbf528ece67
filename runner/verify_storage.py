"""Stored stages checked against what they record about themselves, and healed by moving damage aside.

An evaluation is consistent when every shard matches `predictions/_CHECKSUMS.json`, that list is
the one `_SUCCESS` recorded, `metrics.json` parses, belongs to this run and is the one `_SUCCESS`
recorded, and no listed shard is missing. A training is consistent when each complete checkpoint
holds exactly the files (and checksums) it was published with, and a finished one has its adapter.

Healing never deletes: a damaged object (corrupt, missing from a folder that lists it, or foreign:
another run's, unchecksummed, a link out of storage) is moved to `<prefix>/_quarantine/<stamp>/`
and, where the stage was finished, its `_SUCCESS` goes with it, so the next `runner run` of the
manifest redoes exactly what is missing: shards regenerated, metrics rewritten, training resumed
from the newest checkpoint that is still whole.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Sequence

from runner.paths import (
    CHECKSUMS_FILE,
    TRAININGS,
    RunKeys,
    TrainingKeys,
    is_quarantined,
    quarantine_key,
    shard_index,
)
from runner.storage import CorruptObject, Store

_DIGEST = re.compile(r"^[0-9a-f]{6,64}$")

CHECKSUMS_RECORD = "checksums_sha256"
"""`_SUCCESS` field: sha256 of predictions/_CHECKSUMS.json as the run completed."""
METRICS_RECORD = "metrics_sha256"
"""`_SUCCESS` field: sha256 of metrics.json as last written (scoring rewrites both)."""
SELF_RECORD = "record_sha256"
"""`_SUCCESS` field: sha256 of the record's other fields, so a damaged `_SUCCESS` is told from a damaged object it names."""


@dataclass(frozen=True)
class Finding:
    """One damaged object of a stage, and why."""

    key: str
    reason: str
    folder: bool = False
    movable: bool = True
    """False for an object that is missing: nothing to move, the stage is reopened instead."""


@dataclass(frozen=True)
class Check:
    """What is wrong with one stored stage (a run or a training)."""

    prefix: str
    findings: tuple[Finding, ...] = ()
    reopened: bool = False
    """The stage was finished and its `_SUCCESS` has to go, so the next run redoes the missing work."""
    notes: tuple[str, ...] = field(default=())

    def __bool__(self) -> bool:
        return bool(self.findings)


def quarantine_stamp() -> str:
    """A fresh folder name under `_quarantine/`: UTC time plus a random suffix (never hex-only)."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def _read(store: Store, key: str) -> tuple[bytes | None, str | None]:
    """(bytes, None), (None, None) when absent, or (None, reason) when present but not trustworthy."""
    try:
        if not store.exists(key):
            return None, None
        return store.read_bytes(key), None
    except CorruptObject as exc:
        return None, str(exc)


def _json_object(data: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def success_record(store: Store, keys: RunKeys) -> dict[str, Any]:
    """What `_SUCCESS` records about the run's final objects, read back from storage."""
    record: dict[str, Any] = {"completed_at": time.time(), "digest": keys.digest}
    for key, field_name in ((keys.checksums, CHECKSUMS_RECORD), (keys.metrics, METRICS_RECORD)):
        if store.exists(key):
            record[field_name] = hashlib.sha256(store.read_bytes(key)).hexdigest()
    record[SELF_RECORD] = _record_sha256(record)
    return record


def _record_sha256(record: dict[str, Any]) -> str:
    rest = {k: v for k, v in record.items() if k != SELF_RECORD}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()


def seal(store: Store, keys: RunKeys) -> None:
    """Write `_SUCCESS` with the checksums of the objects it vouches for (also after a rescoring)."""
    store.write_bytes(keys.success, json.dumps(success_record(store, keys)).encode())


def _shard_problem(data: bytes, index: int, expected: Sequence[Sequence[str]] | None) -> str | None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data))
        ids = table.column("id").to_pylist()
    except (pa.ArrowInvalid, OSError, KeyError) as exc:
        return f"not a readable shard (truncated or corrupt): {exc}"
    if expected is None:
        return None
    if index >= len(expected):
        return f"foreign: this run has {len(expected)} shard(s)"
    if sorted(ids) != sorted(expected[index]):  # rows follow the length-grouped batches, not the data order
        return f"foreign: holds other examples than shard {index} of this run"
    return None


def _manifest_problem(data: bytes) -> str | None:
    """Why a stored manifest.yaml cannot be used (a rerun rewrites it), or None."""
    import yaml

    try:
        value = yaml.safe_load(data)
    except (ValueError, RecursionError, yaml.YAMLError):
        return "not valid YAML (corrupt)"
    metrics = value.get("eval", {}).get("metrics") if isinstance(value, dict) and isinstance(value.get("eval"), dict) else None
    return None if isinstance(metrics, list) else "not a resolved manifest (corrupt or foreign)"


def check_evaluation(store: Store, keys: RunKeys, expected: Sequence[Sequence[str]] | None = None) -> Check:
    """Every way a run's stored objects disagree with each other (and with the example ids per
    shard, `expected`, when the caller knows the data); reads every shard."""
    findings: list[Finding] = []
    data, problem = _read(store, keys.success)
    finished = data is not None or problem is not None
    record: dict[str, Any] = {}
    if problem:
        findings.append(Finding(keys.success, problem))
    elif data is not None:
        parsed = _json_object(data)
        if parsed is None or parsed.get(SELF_RECORD) not in (None, _record_sha256(parsed)):
            findings.append(Finding(keys.success, "not a completion record (corrupt)"))
        elif parsed.get("digest") not in (None, keys.digest):
            findings.append(Finding(keys.success, f"foreign: the completion record of run {parsed.get('digest')}"))
        else:
            record = parsed

    names = {key.rsplit("/", 1)[-1] for key in store.list(keys.predictions)}
    listing: dict[str, str] | None = None
    if CHECKSUMS_FILE in names:
        data, problem = _read(store, keys.checksums)
        parsed = _json_object(data) if data is not None else None
        sha = parsed.get("sha256") if parsed else None
        if problem:
            findings.append(Finding(keys.checksums, problem))
        elif not isinstance(sha, dict) or not all(isinstance(v, str) for v in sha.values()):
            findings.append(Finding(keys.checksums, "not a checksum list (corrupt)"))
        elif record.get(CHECKSUMS_RECORD) not in (None, hashlib.sha256(data).hexdigest()):
            findings.append(Finding(keys.checksums, "not the checksum list the run completed with (corrupt or foreign)"))
        else:
            listing = {name: digest.lower() for name, digest in sha.items()}
    elif finished:
        findings.append(Finding(keys.checksums, "missing", movable=False))

    present = sorted(i for i in (shard_index(n) for n in names) if i is not None)
    for index in present:
        key = keys.shard(index)
        name = key.rsplit("/", 1)[-1]
        data, problem = _read(store, key)
        if problem or data is None:
            findings.append(Finding(key, problem or "vanished while being checked"))
            continue
        if listing is not None and name in listing:
            actual = hashlib.sha256(data).hexdigest()
            if actual != listing[name]:
                findings.append(Finding(key, f"sha256 {actual[:16]}… differs from {listing[name][:16]}… in {CHECKSUMS_FILE} (corrupt or foreign)"))
            continue  # its bytes are the ones the run wrote
        if listing is not None:
            findings.append(Finding(key, f"foreign: not listed in {CHECKSUMS_FILE}"))
            continue
        problem = _shard_problem(data, index, expected)
        if problem:
            findings.append(Finding(key, problem))
    if listing is not None and finished:
        for name in sorted(set(listing) - names):
            findings.append(Finding(f"{keys.predictions}/{name}", f"missing (listed in {CHECKSUMS_FILE})", movable=False))

    if finished:
        data, problem = _read(store, keys.metrics)
        parsed = _json_object(data) if data is not None else None
        if problem:
            findings.append(Finding(keys.metrics, problem))
        elif data is None:
            findings.append(Finding(keys.metrics, "missing", movable=False))
        elif parsed is None:
            findings.append(Finding(keys.metrics, "not valid JSON (corrupt)"))
        elif parsed.get("digest") not in (None, keys.digest):
            findings.append(Finding(keys.metrics, f"foreign: the metrics of run {parsed.get('digest')}"))
        elif record.get(METRICS_RECORD) not in (None, hashlib.sha256(data).hexdigest()):
            findings.append(Finding(keys.metrics, "not the metrics.json the run recorded (corrupt or foreign)"))

    if finished:
        data, problem = _read(store, keys.manifest)
        if problem or data is None or _manifest_problem(data):
            findings.append(Finding(keys.manifest, problem or ("missing" if data is None else _manifest_problem(data)), movable=data is not None or bool(problem)))

    reopened = finished and bool(findings)
    if reopened:
        # The checksum list goes too: regenerated shards differ from the old ones in their timings,
        # and the run writes a new list from what it stores when it completes again.
        for key in (keys.checksums, keys.success):
            if not any(f.key == key for f in findings) and (key != keys.checksums or CHECKSUMS_FILE in names):
                findings.append(Finding(key, "reopened, so the run redoes what is missing"))
    return Check(keys.prefix, tuple(findings), reopened)


def _checkpoint_folders(store: Store, keys: TrainingKeys) -> dict[int, str]:
    folders = {}
    for key in store.list(keys.checkpoints):
        name = key[len(keys.checkpoints) + 1 :].split("/", 1)[0]
        if name.startswith("checkpoint-") and name[len("checkpoint-") :].isdigit():
            folders[int(name[len("checkpoint-") :])] = f"{keys.checkpoints}/{name}"
    return folders


def check_checkpoint(store: Store, key: str, deep: bool = True) -> str | None:
    """Why a complete stored checkpoint cannot be resumed from, or None."""
    try:
        problems = store.verify_dir(key, deep=deep)
    except CorruptObject as exc:
        return str(exc)
    return "; ".join(problems) if problems else None


def check_training(store: Store, keys: TrainingKeys, deep: bool = True, checkpoints: bool = True) -> Check:
    """Damaged checkpoints (complete ones only: an incomplete one is being written or is skipped anyway)
    and, for a finished training, a missing or damaged adapter or completion record."""
    findings: list[Finding] = []
    if checkpoints:
        for _, key in sorted(_checkpoint_folders(store, keys).items()):
            if store.dir_complete(key):
                problem = check_checkpoint(store, key, deep)
                if problem:
                    findings.append(Finding(key, problem, folder=True))
    data, problem = _read(store, keys.success)
    reopened = False
    if problem or data is not None:
        own: list[Finding] = []
        if problem or _json_object(data) is None:
            own.append(Finding(keys.success, problem or "not a completion record (corrupt)"))
        if not store.dir_complete(keys.adapter):
            own.append(Finding(keys.adapter, "missing", folder=True, movable=False))
        else:
            problems = check_checkpoint(store, keys.adapter, deep)
            if problems:
                own.append(Finding(keys.adapter, problems, folder=True))
        if own:
            reopened = True
            findings += own
            if not any(f.key == keys.success for f in own):
                findings.append(Finding(keys.success, "reopened, so the training resumes from its newest whole checkpoint"))
    return Check(keys.prefix, tuple(findings), reopened)


def repair(store: Store, check: Check, stamp: str | None = None) -> str:
    """Move every damaged object of `check` aside (never deleted); one line saying what was done."""
    stamp = stamp or quarantine_stamp()
    moved = []
    for finding in check.findings:
        if not finding.movable:
            continue
        dest = quarantine_key(check.prefix, finding.key, stamp)
        done = store.quarantine_dir(finding.key, dest) if finding.folder else store.quarantine(finding.key, dest)
        if done:
            moved.append(finding.key[len(check.prefix) + 1 :])
    missing = [f.key[len(check.prefix) + 1 :] for f in check.findings if not f.movable]
    parts = []
    if moved:
        parts.append(f"moved {', '.join(moved)} to {check.prefix}/_quarantine/{stamp}/")
    if missing:
        parts.append(f"missing {', '.join(missing)}")
    return "; ".join(parts)


def open_run(location: str) -> tuple[Store, RunKeys]:
    """The store and keys of a run location `<storage>/<name>/<digest>` (a folder or a URI)."""
    from runner.errors import UserError
    from runner.storage import open_store

    root, _, digest = location.rstrip("/").rpartition("/")
    root, _, name = root.rpartition("/")
    if not name or not digest:
        raise UserError(f"{location!r} is not a run location like runs/<name>/<digest>")
    return open_store(root or "."), RunKeys(name, digest)


@dataclass(frozen=True)
class StoredStages:
    """The stages a storage holds: run prefixes and training prefixes."""

    runs: tuple[RunKeys, ...]
    trainings: tuple[TrainingKeys, ...]


def find_stages(store: Store) -> StoredStages:
    """Every `<name>/<digest>/` run folder and `trainings/<digest>/` folder at the storage root."""
    runs, trainings = set(), set()
    for key in store.list(""):
        if is_quarantined(key):
            continue
        parts = key.split("/")
        if len(parts) < 3 or not _DIGEST.match(parts[1]):
            continue
        if parts[0] == TRAININGS:
            trainings.add(TrainingKeys(parts[1]))
        else:
            runs.add(RunKeys(parts[0], parts[1]))
    return StoredStages(tuple(sorted(runs, key=lambda k: k.prefix)), tuple(sorted(trainings, key=lambda k: k.digest)))


@dataclass
class VerifyResult:
    """What `runner verify` found: one line per problem, and what --repair did."""

    lines: list[str] = field(default_factory=list)
    problems: int = 0
    repaired: list[str] = field(default_factory=list)
    """Names of runs (and `trainings/<digest>`) reopened or repaired; rerunning their manifests redoes the work."""
    checked: int = 0


def verify_storage(store: Store, repair_found: bool = False) -> VerifyResult:
    """Check every run and training under `store` (every byte read); with `repair_found`, quarantine
    what is damaged and reopen the stages concerned."""
    result = VerifyResult()
    stages = find_stages(store)
    checks = [(keys.prefix, check_training(store, keys)) for keys in stages.trainings]
    checks += [(keys.name, check_evaluation(store, keys)) for keys in stages.runs]
    result.checked = len(checks)
    for name, check in checks:
        for finding in check.findings:
            result.problems += 1
            result.lines.append(f"{store.uri.rstrip('/')}/{finding.key}: {finding.reason}")
        if check and repair_found:
            done = repair(store, check)
            result.repaired.append(name)
            result.lines.append(f"repaired {check.prefix}: {done}" + ("; reopened" if check.reopened else ""))
    return result


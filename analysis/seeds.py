"""Which runs are seeds of one configuration: the manifest fields that only reseed a run.

A configuration is a resolved manifest without what names, stores or reseeds it, evaluated with
the same model weights (provenance.json `model`) on the same data (the eval files' sha256). Runs
of one configuration that differ in `train.seed`, `icl.seed` or a decoding strategy's `seed` are
its seeds: the report pools them into one row, `compare --seeds` pairs two configurations' runs
seed by seed. Runs that differ in anything else stay apart, however alike they look.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from analysis.load import RunInfo

SEED_FIELDS = ("train.seed", "icl.seed", "decoding.seed")
"""Manifest fields that change only the random draws of a run: adapter initialisation, dropout
and data order; the shots drawn; a sampling strategy's per-example generators."""

# Fields that name, store or record a run rather than define it: `stages` holds the digests of the
# trainings used, which follow from the other fields (and change with train.seed); `eval.metrics`
# is not part of a run's identity (analysis rescores every run with the metrics it asks for).
_NOT_CONFIGURATION = ("name", "description", "output", "stages", "eval.metrics")

MODEL_WEIGHTS = "model weights (provenance.json)"
"""Pseudo-field naming a difference in the model identity recorded at run time."""


def flatten(block: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted path → value for every leaf of a nested mapping (lists and empty mappings are leaves)."""
    flat: dict[str, Any] = {}
    for key, value in block.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def _defining(path: str) -> bool:
    return not any(path == skip or path.startswith(skip + ".") for skip in _NOT_CONFIGURATION)


def seeds_of(manifest: dict[str, Any]) -> dict[str, Any]:
    """The seed fields a manifest holds (decoding.seed only for strategies that have one)."""
    flat = flatten(manifest)
    return {name: flat[name] for name in SEED_FIELDS if name in flat}


def configuration(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest's defining fields, dotted, without the seeds."""
    return {path: value for path, value in flatten(manifest).items() if _defining(path) and path not in SEED_FIELDS}


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))


def manifest_key(manifest: dict[str, Any]) -> str:
    """Equal for manifests that differ at most in seeds, names and storage."""
    return _canonical(configuration(manifest))


def config_id(run: RunInfo) -> str:
    """12 hex digits naming the run's configuration: manifest without seeds, model weights, data."""
    text = _canonical([configuration(run.manifest), run.model_identity, run.eval_set.data_sha256])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def differing_fields(a: RunInfo, b: RunInfo) -> tuple[tuple[str, Any, Any], ...]:
    """(field, A's value, B's value) for each defining field that differs, seeds included."""
    flat_a = {p: v for p, v in flatten(a.manifest).items() if _defining(p)}
    flat_b = {p: v for p, v in flatten(b.manifest).items() if _defining(p)}
    found = [(p, flat_a.get(p), flat_b.get(p)) for p in sorted(set(flat_a) | set(flat_b)) if flat_a.get(p) != flat_b.get(p)]
    if a.model_identity and b.model_identity and a.model_identity != b.model_identity:
        found.append((MODEL_WEIGHTS, a.model_identity, b.model_identity))
    return tuple(found)


def seed_twins(differences: tuple[tuple[str, Any, Any], ...]) -> bool:
    """True when two runs differ, and only in seeds."""
    return bool(differences) and all(name in SEED_FIELDS for name, _, _ in differences)


def seed_label(seeds: dict[str, Any], fields: tuple[str, ...] | None = None) -> str:
    """`train.seed=1 icl.seed=1`: the given seed fields (default: all the manifest holds)."""
    names = fields if fields is not None else tuple(seeds)
    return " ".join(f"{name}={seeds.get(name)}" for name in names) or "—"


def seed_order(seeds: dict[str, Any]) -> tuple:
    """Sort key of a seed assignment: by train, icl, then decoding seed, numerically; absent last."""
    values = (seeds.get(name) for name in SEED_FIELDS)
    return tuple((0, v, "") if isinstance(v, int) else (1, 0, str(v)) for v in values)

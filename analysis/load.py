"""Completed runs only: a run counts once its `_SUCCESS` exists; its shards become one table."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import yaml

from runner.paths import RunKeys, parse_run_prefix
from runner.shards import read_predictions
from runner.storage import Store


@dataclass(frozen=True)
class CompletedRun:
    """One finished run: its resolved manifest and every prediction."""

    keys: RunKeys
    manifest: dict[str, Any]
    predictions: pa.Table
    metrics: dict[str, Any]
    """metrics.json: its training measurements cannot be recomputed from predictions."""


def completed_runs(store: Store) -> list[CompletedRun]:
    """Every run under the store root whose `_SUCCESS` marker exists, sorted by name."""
    runs = []
    for key in store.list(""):
        keys = parse_run_prefix(key)
        if keys is None:
            continue
        manifest = yaml.safe_load(store.read_bytes(keys.manifest))
        metrics = json.loads(store.read_bytes(keys.metrics))
        runs.append(CompletedRun(keys, manifest, read_predictions(store, keys), metrics))
    return sorted(runs, key=lambda r: (r.keys.name, r.keys.digest))

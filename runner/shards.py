"""Prediction shards: one Parquet file per `shard_size` evaluation examples, written whole."""

from __future__ import annotations

import hashlib
import io
from typing import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from runner.errors import StorageError
from runner.paths import RunKeys, shard_index
from runner.storage import Store

SHARD_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("dataset", pa.string()),
        ("format", pa.string()),
        ("prompt", pa.string()),
        ("prompt_sha256", pa.string()),
        ("shot_ids", pa.list_(pa.string())),
        ("n_shots", pa.int32()),
        ("prediction", pa.string()),
        ("raw_output", pa.string()),
        ("references", pa.list_(pa.string())),
        ("options", pa.list_(pa.string())),
        ("prompt_tokens", pa.int32()),
        ("output_tokens", pa.int32()),
        ("stopped", pa.bool_()),
        ("batch", pa.string()),
        ("batch_size", pa.int32()),
        ("batch_seconds", pa.float64()),
        ("batch_first_token_seconds", pa.float64()),
        ("batch_peak_memory_bytes", pa.int64()),
        ("batch_output_tokens", pa.int32()),
        ("batch_target_forwards", pa.int32()),
        ("draft_proposed_tokens", pa.int32()),
        ("draft_accepted_tokens", pa.int32()),
        ("reference_nll", pa.float64()),
        ("reference_tokens", pa.int32()),
        ("prompt_format", pa.string()),
        ("protocol", pa.string()),
        ("choices", pa.list_(pa.string())),
        ("choice_logprobs", pa.list_(pa.float64())),
        ("choice_tokens", pa.list_(pa.int32())),
    ]
)


def encode_shard(rows: Sequence[dict]) -> bytes:
    """Parquet bytes of prediction rows in the fixed shard schema."""
    table = pa.Table.from_pylist(list(rows), schema=SHARD_SCHEMA)
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def decode_shard(data: bytes, key: str) -> pa.Table:
    """The table inside a shard, or StorageError if the bytes are not a readable shard."""
    try:
        return pq.read_table(io.BytesIO(data))
    except (pa.ArrowInvalid, OSError) as exc:
        raise StorageError(f"unreadable shard {key}: {exc}") from None


def completed_shards(store: Store, keys: RunKeys) -> set[int]:
    """Indices of shards already in storage (each written atomically, so present = complete)."""
    found = set()
    for key in store.list(keys.predictions):
        index = shard_index(key.rsplit("/", 1)[-1])
        if index is not None:
            found.add(index)
    return found


def read_predictions(store: Store, keys: RunKeys) -> pa.Table:
    """All shards of a run concatenated in shard order."""
    return read_predictions_and_checksums(store, keys)[0]


def read_predictions_and_checksums(store: Store, keys: RunKeys) -> tuple[pa.Table, dict[str, str]]:
    """All shards concatenated in shard order, and the sha256 of each shard file by file name."""
    tables, checksums = [], {}
    for index in sorted(completed_shards(store, keys)):
        key = keys.shard(index)
        data = store.read_bytes(key)
        tables.append(decode_shard(data, key))
        checksums[key.rsplit("/", 1)[-1]] = hashlib.sha256(data).hexdigest()
    if not tables:
        return SHARD_SCHEMA.empty_table(), checksums
    return pa.concat_tables(tables, promote_options="default"), checksums

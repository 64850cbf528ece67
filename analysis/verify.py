"""Checks on one prediction shard before its rows are trusted: checksum, Parquet footer, schema.

A shard passes when its bytes match the run's checksum list (when the run wrote one), it decodes
as Parquet, and it has every column analysis reads with a type the current shard schema can take.
Columns the schema gained later (speculative-decoding tallies, say) may be absent and read as
null, so older runs still load; a column of an incompatible type means a different schema
version and fails the shard.
"""

from __future__ import annotations

import hashlib
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq

from runner.paths import CHECKSUMS_FILE
from runner.shards import SHARD_SCHEMA

SCHEMA_VERSION_KEY = b"qabench.shard_schema_version"
"""Parquet schema metadata key that, when the runner writes it, must equal SHARD_SCHEMA's value."""

REQUIRED_COLUMNS = ("id", "dataset", "format", "prediction", "references", "prompt_tokens", "output_tokens", "batch", "batch_seconds")
"""Columns without which no score or speed figure can be computed."""

# The prompt text is the bulk of a shard and no aggregate reads it; prompt_sha256 identifies it.
UNREAD_COLUMNS = ("prompt",)

ANNOTATION_COLUMNS = (("prompt_format", pa.string()), ("protocol", pa.string()))
"""Per-row facts the report shows in run labels (prompt format 'chat' | 'plain', protocol
'generate' | 'loglikelihood'). Kept even by a runner whose SHARD_SCHEMA predates them, so a run
that wrote them is labelled; shards without them read as null and their runs' labels omit them."""

TARGET_SCHEMA = pa.schema(
    [f for f in SHARD_SCHEMA if f.name not in UNREAD_COLUMNS]
    + [pa.field(name, kind) for name, kind in ANNOTATION_COLUMNS if name not in SHARD_SCHEMA.names]
)
"""Schema of every table analysis builds from shards, whatever shard version they came from."""


class ShardProblem(Exception):
    """A shard that cannot be used; the message says what is wrong with it."""


def parse_checksums(data: bytes) -> dict[str, str]:
    """File name → sha256 hex from a run's checksum list (predictions/_CHECKSUMS.json, optional):
    {"sha256": {"shard-00000.parquet": "<hex>", ...}}; ShardProblem if it is not that shape."""
    try:
        listing = json.loads(data)["sha256"]
        if not isinstance(listing, dict) or not all(isinstance(v, str) for v in listing.values()):
            raise TypeError
        return {name: digest.lower() for name, digest in listing.items()}
    except (ValueError, KeyError, TypeError):
        raise ShardProblem('not a checksum list: expected {"sha256": {"shard-00000.parquet": "<hex>", ...}}') from None


def read_shard(data: bytes, expected_sha256: str | None) -> pa.Table:
    """The shard's rows in TARGET_SCHEMA, or ShardProblem saying why they cannot be trusted."""
    if expected_sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected_sha256:
            raise ShardProblem(f"checksum mismatch: sha256 is {actual}, {CHECKSUMS_FILE} lists {expected_sha256}")
    try:
        shard = pq.ParquetFile(io.BytesIO(data))
        schema = shard.schema_arrow
    except (pa.ArrowInvalid, OSError) as exc:
        raise ShardProblem(f"not a readable Parquet file (truncated or corrupt): {exc}") from None
    _check_version(schema)
    missing = [name for name in REQUIRED_COLUMNS if name not in schema.names]
    if missing:
        raise ShardProblem(f"schema differs from this version's shard schema: no column(s) {', '.join(missing)}")
    present = [f.name for f in TARGET_SCHEMA if f.name in schema.names]
    try:
        table = shard.read(columns=present)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ShardProblem(f"not a readable Parquet file (truncated or corrupt): {exc}") from None
    return _conform(table)


def _check_version(schema: pa.Schema) -> None:
    expected = (SHARD_SCHEMA.metadata or {}).get(SCHEMA_VERSION_KEY)
    found = (schema.metadata or {}).get(SCHEMA_VERSION_KEY)
    if expected is not None and found is not None and found != expected:
        raise ShardProblem(f"shard schema version {found.decode()} is not this version's {expected.decode()}")


def _conform(table: pa.Table) -> pa.Table:
    """Cast each column to its TARGET_SCHEMA type; absent optional columns become nulls."""
    columns = []
    for field in TARGET_SCHEMA:
        if field.name not in table.column_names:
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        column = table.column(field.name)
        if column.type != field.type:
            try:
                # Safe casts only (int32 → int64, string → large_string): a lossy one means the
                # column holds something else than this version's schema says.
                column = column.cast(field.type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise ShardProblem(
                    f"schema differs from this version's shard schema: column {field.name} is {column.type}, expected {field.type}"
                ) from None
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=TARGET_SCHEMA)

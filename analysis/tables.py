"""results.csv and report.md from summary rows."""

from __future__ import annotations

import csv
import io
from typing import Any, Sequence

COLUMNS = (
    "model", "method", "shots", "decoding", "n", "exact_match", "f1", "trainable_percent", "train_tokens_per_second",
    "peak_memory_gib", "heldout_perplexity", "train_seconds", "generated_tokens_per_second", "run", "digest",
)


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    """CSV with a fixed leading column order, then any further metric columns."""
    columns = list(COLUMNS) + sorted({k for r in rows for k in r} - set(COLUMNS))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return out.getvalue()


def to_markdown(rows: Sequence[dict[str, Any]], source: str) -> str:
    """A Markdown report: one row per completed run."""
    headers = ["model", "method", "shots", "decoding", "n", "EM", "F1", "trainable %", "train tok/s", "peak mem GiB", "held-out ppl", "gen tok/s", "run"]
    keys = [
        "model", "method", "shots", "decoding", "n", "exact_match", "f1", "trainable_percent", "train_tokens_per_second",
        "peak_memory_gib", "heldout_perplexity", "generated_tokens_per_second", "run",
    ]
    lines = [
        "# qabench report",
        "",
        f"Source: `{source}` — {len(rows)} completed run(s). EM = exact match, F1 = SQuAD token F1, both after "
        "SQuAD normalisation and averaged over examples. Training: trainable % of parameters, train tok/s = "
        "non-padding tokens per second, peak memory (GPU allocated, or process RSS on CPU), held-out ppl = "
        "perplexity of held-out train-split answers. gen tok/s = generated answer tokens per second of generation.",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "---|" * len(headers),
    ]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(k)) if k != "run" else f"{row['run']}/{row['digest']}" for k in keys) + " |")
    return "\n".join(lines) + "\n"

"""Download the official UnifiedQA TSV files, one atomic file at a time."""

from __future__ import annotations

import http.client
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from runner.atomic import replacing
from runner.data.example import OFFICIAL_DATASET_FORMATS, SYNTHETIC_DATASET_FORMATS
from runner.data.unifiedqa import split_path
from runner.errors import DataError, InfraError, Problem

UNIFIEDQA_URL = "https://storage.googleapis.com/unifiedqa/data"

# A split name becomes part of a path and a URL, so it must not smuggle in "/" or "..".
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_CHUNK = 1 << 16
# 408 (timeout) and 429 (rate limit) are the server's trouble, worth a retry; other 4xx mean
# the file is not there or not ours to read, which retrying will not change.
_RETRYABLE_CLIENT_ERRORS = (408, 429)


def _check_names(datasets: Sequence[str], splits: Sequence[str]) -> None:
    """Raise one DataError listing every dataset or split name that cannot be fetched."""
    problems = []
    known = ", ".join(sorted(OFFICIAL_DATASET_FORMATS))
    for dataset in datasets:
        if dataset in SYNTHETIC_DATASET_FORMATS:
            problems.append(Problem(f"{dataset!r} is generated locally (data synth), not downloaded"))
        elif dataset not in OFFICIAL_DATASET_FORMATS:
            problems.append(Problem(f"unknown dataset {dataset!r}; known datasets: {known}"))
    for split in splits:
        if not _SPLIT_NAME.match(split):
            problems.append(Problem(f"invalid split name {split!r}"))
    if problems:
        raise DataError(problems)


def _download(url: str, dest: Path, timeout: float) -> int:
    """Stream url into dest via a temporary sibling; return the byte count. Nothing partial remains."""
    size = 0
    with replacing(dest) as tmp:
        with open(tmp, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    expected = response.headers.get("Content-Length")
                    while chunk := response.read(_CHUNK):
                        out.write(chunk)
                        size += len(chunk)
            except urllib.error.HTTPError as exc:
                message = f"cannot download {url}: HTTP {exc.code} {exc.reason}"
                if 400 <= exc.code < 500 and exc.code not in _RETRYABLE_CLIENT_ERRORS:
                    raise DataError([Problem(message)]) from None
                raise InfraError(f"{message}; try again later") from None
            except urllib.error.URLError as exc:
                raise InfraError(f"cannot reach {url}: {exc.reason}; are you offline?") from None
            except (OSError, http.client.HTTPException) as exc:
                # Timeouts and resets mid-body land here; IncompleteRead is an HTTPException.
                reason = str(exc) or type(exc).__name__
                raise InfraError(f"cannot reach {url}: {reason}; are you offline?") from None
            if expected is not None and expected.isdigit() and int(expected) != size:
                raise InfraError(f"download of {url} was cut short: got {size} of {expected} bytes")
    return size


def fetch(
    datasets: Sequence[str],
    splits: Sequence[str],
    to: Path,
    base_url: str = UNIFIEDQA_URL,
    timeout: float = 60,
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Download <base_url>/<dataset>/<split>.tsv to to/<dataset>/<split>.tsv, skipping present files."""
    _check_names(datasets, splits)
    paths = []
    missing: list[Problem] = []
    for dataset in datasets:
        for split in splits:
            dest = split_path(Path(to), dataset, split)
            paths.append(dest)
            # Files appear only via os.replace, so one that exists is complete.
            if dest.exists():
                log(f"have {dest}")
                continue
            url = f"{base_url.rstrip('/')}/{dataset}/{split}.tsv"
            log(f"fetch {url}")
            try:
                size = _download(url, dest, timeout)
            except DataError as exc:
                # Keep going so one run names every missing file; network failures stop at once.
                missing.extend(exc.problems)
                continue
            log(f"wrote {dest} ({size:,} bytes)")
    if missing:
        raise DataError(missing)
    return paths

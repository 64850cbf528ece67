"""Download the official UnifiedQA files, one atomic file at a time.

Each split is `<base>/<dataset>/<split>.tsv`; where OFFICIAL_DATASETS lists answer splits, the
split's gold answers `<base>/<dataset>/<split>_ans.jsonl` come too (UnifiedQA's SQuAD dev scorer
reads them). Files land at the same relative paths under the target folder.
"""

from __future__ import annotations

import http.client
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from runner.atomic import replacing
from runner.data.example import OFFICIAL_DATASETS, SYNTHETIC_DATASET_FORMATS, unknown_dataset
from runner.data.unifiedqa import answers_path, split_path
from runner.errors import DataError, InfraError, Problem

UNIFIEDQA_URL = "https://storage.googleapis.com/unifiedqa/data"

# A split name becomes part of a path and a URL, so it must not smuggle in "/" or "..".
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_CHUNK = 1 << 16
# 408 (timeout) and 429 (rate limit) are the server's trouble, worth a retry; other 4xx mean
# the file is not there or not ours to read, which retrying will not change.
_RETRYABLE_CLIENT_ERRORS = (408, 429)
DEFAULT_SPLITS = ("train", "dev")
"""What `fetch` downloads of each dataset when no splits are named: those of these it has."""


def _plan(datasets: Sequence[str], splits: Sequence[str] | None) -> list[tuple[str, str]]:
    """The (dataset, split) pairs to fetch; one DataError lists every name that cannot be fetched."""
    problems = []
    for split in splits or ():
        if not _SPLIT_NAME.match(split):
            problems.append(Problem(f"invalid split name {split!r}"))
    pairs = []
    for dataset in datasets:
        if dataset in SYNTHETIC_DATASET_FORMATS:
            problems.append(Problem(f"{dataset!r} is generated locally (data synth), not downloaded"))
            continue
        if dataset not in OFFICIAL_DATASETS:
            problems.append(Problem(unknown_dataset(dataset, OFFICIAL_DATASETS)))
            continue
        have = OFFICIAL_DATASETS[dataset].splits
        wanted = [s for s in DEFAULT_SPLITS if s in have] if splits is None else list(splits)
        for split in wanted:
            if split in have:
                pairs.append((dataset, split))
            elif _SPLIT_NAME.match(split):
                message = f"{dataset} has no {split!r} split in the UnifiedQA bucket; it has {', '.join(have)}"
                problems.append(Problem(message))
    if problems:
        raise DataError(problems)
    return pairs


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


def _fetch_file(url: str, dest: Path, timeout: float, log: Callable[[str], None]) -> None:
    """Download url to dest unless dest exists; DataError if the server has no such file."""
    # Files appear only via os.replace, so one that exists is complete.
    if dest.exists():
        log(f"have {dest}")
        return
    log(f"fetch {url}")
    size = _download(url, dest, timeout)
    log(f"wrote {dest} ({size:,} bytes)")


def fetch(
    datasets: Sequence[str],
    splits: Sequence[str] | None,
    to: Path,
    base_url: str = UNIFIEDQA_URL,
    timeout: float = 60,
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Download each <dataset>/<split>.tsv (splits None: train and dev) and its answers into `to`.

    Present files are skipped. Returns the split files, answer files not included."""
    pairs = _plan(datasets, splits)
    base = base_url.rstrip("/")
    paths = []
    missing: list[Problem] = []
    for dataset, split in pairs:
        dest = split_path(Path(to), dataset, split)
        paths.append(dest)
        if split in OFFICIAL_DATASETS[dataset].answer_splits:
            # The answers come first: a split file that exists then never lacks answers it should have.
            answers = answers_path(dest)
            try:
                _fetch_file(f"{base}/{dataset}/{answers.name}", answers, timeout, log)
            except DataError as exc:
                # The reader takes the TSV targets when no answers file is beside the split.
                log(f"note: {exc.problems[0].message}; {dataset} {split} keeps the one target per line of {dest.name}")
        try:
            _fetch_file(f"{base}/{dataset}/{dest.name}", dest, timeout, log)
        except DataError as exc:
            # Keep going so one run names every missing file; network failures stop at once.
            missing.extend(exc.problems)
    if missing:
        raise DataError(missing)
    return paths

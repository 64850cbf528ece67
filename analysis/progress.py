"""Progress while loading many shards: a rich bar on a terminal, a plain line now and then elsewhere.

Progress goes to stderr so that stdout carries only the report's results (tables, written paths).
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

_console = Console(stderr=True, highlight=False)

# Without a terminal, one line per 10 s shows liveness without flooding a CI log.
PLAIN_INTERVAL_SECONDS = 10.0


class _Ticker:
    def __init__(self, label: str, total: int, bar: Progress | None, task: int | None, silent: bool = False):
        self._label, self._total, self._bar, self._task, self._silent = label, total, bar, task, silent
        self._done = 0
        self._last = time.monotonic()

    def advance(self, amount: int = 1) -> None:
        """Count `amount` more items done."""
        self._done += amount
        if self._bar is not None:
            self._bar.advance(self._task, amount)
        elif not self._silent and time.monotonic() - self._last > PLAIN_INTERVAL_SECONDS:
            self._last = time.monotonic()
            print(f"{self._label}: {self._done}/{self._total}", file=sys.stderr, flush=True)


@contextmanager
def progress(label: str, total: int, enabled: bool = True) -> Iterator[_Ticker]:
    """A progress bar for `total` items when stderr is a terminal; periodic plain lines otherwise;
    nothing at all when not `enabled`."""
    if not enabled or not _console.is_terminal:
        yield _Ticker(label, total, None, None, silent=not enabled)
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=_console, transient=True) as bar:
        yield _Ticker(label, total, bar, bar.add_task(label, total=total))

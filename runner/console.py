"""Output for people and for log collectors: rich progress on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=False, highlight=False, soft_wrap=True)


def log(message: str) -> None:
    """One line of run progress (stdout)."""
    if console.is_terminal:
        console.print(message)
    else:
        print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


class _Task:
    def __init__(self, progress: Progress | None, task_id: int | None, total: int, label: str):
        self._progress, self._task_id, self._total, self._label = progress, task_id, total, label
        self._done = 0
        self._last_print = 0.0

    def advance(self, amount: int = 1) -> None:
        self._done += amount
        if self._progress is not None:
            self._progress.advance(self._task_id, amount)
        elif time.monotonic() - self._last_print > 10 or self._done >= self._total:
            # Without a terminal, a line every 10 s keeps logs readable and shows liveness.
            self._last_print = time.monotonic()
            log(f"{self._label}: {self._done}/{self._total}")


@contextmanager
def progress(label: str, total: int) -> Iterator[_Task]:
    """A progress bar on a terminal; periodic plain lines elsewhere."""
    if not console.is_terminal:
        yield _Task(None, None, total, label)
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task_id = bar.add_task(label, total=total)
        yield _Task(bar, task_id, total, label)


def error(message: str) -> None:
    """A user-facing error line on stderr."""
    print(message, file=sys.stderr, flush=True)

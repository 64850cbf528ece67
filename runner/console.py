"""Output for people and for log collectors: rich progress on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from runner.storage_uri import redact

console = Console(stderr=False, highlight=False, soft_wrap=True)
_stderr_console = Console(stderr=True, highlight=False, soft_wrap=True)


# Without a terminal, a progress line every 10 s keeps logs readable and still shows liveness.
PLAIN_INTERVAL_SECONDS = 10.0


def _stamped(message: str) -> str:
    return f"{time.strftime('%H:%M:%S')} {message}"


def log(message: str) -> None:
    """One line of run progress (stdout), credentials in URIs redacted like every line printed here."""
    message = redact(message)
    if console.is_terminal:
        console.print(message)
    else:
        print(_stamped(message), flush=True)


def _note(message: str) -> None:
    print(_stamped(redact(message)), file=sys.stderr, flush=True)


class _Task:
    def __init__(self, bar: Progress | None, task_id: int | None, total: int, label: str, say: Callable[[str], None] | None):
        self._bar, self._task_id, self._total, self._label, self._say = bar, task_id, total, label, say
        self._done = 0
        self._last_print = 0.0

    def advance(self, amount: int = 1) -> None:
        """Count `amount` more items done."""
        self._done += amount
        if self._bar is not None:
            self._bar.advance(self._task_id, amount)
        elif self._say is not None and (time.monotonic() - self._last_print > PLAIN_INTERVAL_SECONDS or self._done >= self._total):
            self._last_print = time.monotonic()
            self._say(f"{self._label}: {self._done}/{self._total}")


@contextmanager
def progress(label: str, total: int, *, stderr: bool = False, transient: bool = False, enabled: bool = True) -> Iterator[_Task]:
    """A progress bar for `total` items on a terminal; a timestamped line every 10 s elsewhere; nothing when not `enabled`.

    `stderr=True` leaves stdout to results (analysis prints its tables there); `transient=True`
    erases the bar once done, for a step whose result is printed next.
    """
    screen = _stderr_console if stderr else console
    if not enabled or not screen.is_terminal:
        say = (_note if stderr else log) if enabled else None
        yield _Task(None, None, total, label, say)
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=screen, transient=transient) as bar:
        yield _Task(bar, bar.add_task(label, total=total), total, label, None)


def error(message: str) -> None:
    """A user-facing error line on stderr (a URI's user:password@ shown as ***@)."""
    print(redact(message), file=sys.stderr, flush=True)

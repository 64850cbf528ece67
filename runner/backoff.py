"""Batch size that backs off on out-of-memory instead of crashing the run.

The manifest's batch size is an upper bound. When a batch does not fit, it is split in half and
the smaller size is kept for the rest of the run, so one long-prompt batch costs one retry, not
the run; the answers are unchanged because greedy outputs do not depend on batch size.
"""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar

from runner.console import log
from runner.errors import InfraError

Item = TypeVar("Item")
Result = TypeVar("Result")


def _release_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class MemoryBackoff:
    """The largest batch known to fit, halved each time a batch runs out of memory."""

    def __init__(self, limit: int):
        self.limit = limit

    def run(self, batch: Sequence[Item], work: Callable[[list[Item]], Result]) -> list[tuple[list[Item], Result]]:
        """`work` on the batch, or on consecutive parts of it that fit; (part, result) in order."""
        import torch

        pending = [list(batch[i : i + self.limit]) for i in range(0, len(batch), self.limit)]
        done = []
        while pending:
            part = pending.pop(0)
            try:
                done.append((part, work(part)))
            except torch.OutOfMemoryError:
                _release_memory()
                if len(part) == 1:
                    raise InfraError(
                        "out of memory generating a single prompt: lower decoding.max_new_tokens or icl.shots, "
                        "quantize the model, or use a device with more memory"
                    ) from None
                self.limit = max(1, len(part) // 2)
                log(f"out of memory at batch size {len(part)}; continuing at {self.limit}")
                pending[:0] = [part[i : i + self.limit] for i in range(0, len(part), self.limit)]
        return done

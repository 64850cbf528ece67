"""Run the runner and kill it at a chosen point: `python tests/kill_at.py POINT N -- run MANIFEST --storage S`.

Production code has no test hooks; this launcher wraps library and store functions in its own
process, then calls `runner.cli.main`. On the N-th time POINT is reached the process SIGKILLs
itself (or, for `sigterm`, sends itself SIGTERM and lets the runner stop as on preemption).

Points:
  heldout-eval       after the N-th held-out evaluation batch, before its loss is logged (the first
                     evaluation is the one before training)
  step               after the N-th optimizer step, before its log, evaluation and checkpoint
  checkpoint-save    inside the trainer's N-th checkpoint save: weights and optimizer written, the
                     RNG state, trainer state and completion marker not
  checkpoint-upload  inside the N-th publication of a checkpoint: S3 after its first file is
                     uploaded (no folder marker); the local store at the start (its folder is storage)
  between-shards     right after the N-th prediction shard is stored
  shard-upload       inside the N-th shard write: S3 after the local copy and journal entry, before
                     the PUT; the local store after the temp file, before it is linked into place
  any-write          before the N-th write of any kind to storage (write_bytes, write_new, put_dir)
  sigterm            SIGTERM after the N-th optimizer step (preemption: checkpoint, exit 143)
"""

from __future__ import annotations

import os
import signal
import sys

POINTS = ("heldout-eval", "step", "checkpoint-save", "checkpoint-upload", "between-shards", "shard-upload", "any-write", "sigterm")


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class Counter:
    """Counts arrivals at a point; `hit()` is True on the N-th."""

    def __init__(self, n: int):
        self.n, self.seen = n, 0

    def hit(self) -> bool:
        self.seen += 1
        return self.seen == self.n


def _is_shard(key: str) -> bool:
    return "/predictions/shard-" in key


def install(point: str, n: int) -> None:
    """Wrap the functions that reach `point` so that its N-th arrival kills the process."""
    import transformers
    from transformers.trainer_callback import CallbackHandler

    from runner.s3store import S3Store
    from runner.storage import LocalStore

    counter = Counter(n)
    armed = set()  # where the armed kill fires: "upload" (S3 checkpoint file), "link", "create"
    depth = [0]

    def outermost(cls, name: str, hook) -> None:
        """Wrap cls.name so `hook(store, key, call)` sees only outermost store calls (an S3 write
        passes through its local cache, itself a LocalStore)."""
        original = getattr(cls, name)

        def wrapped(self, key, *args, **kwargs):
            def call():
                depth[0] += 1
                try:
                    return original(self, key, *args, **kwargs)
                finally:
                    depth[0] -= 1

            return hook(self, key, call) if depth[0] == 0 else call()

        setattr(cls, name, wrapped)

    def wrap(owner, name: str, before=None, after=None) -> None:
        original = getattr(owner, name)

        def wrapped(*args, **kwargs):
            if before is not None:
                before(*args)
            result = original(*args, **kwargs)
            if after is not None:
                after(*args)
            return result

        setattr(owner, name, wrapped)

    def kill_on_hit(*_):
        if counter.hit():
            die()

    if point == "heldout-eval":
        wrap(CallbackHandler, "on_prediction_step", before=kill_on_hit)
    elif point == "step":
        wrap(CallbackHandler, "on_step_end", before=kill_on_hit)
    elif point == "sigterm":
        # The runner's SIGTERM handler notes the request; its callback saves and stops after this step.
        wrap(CallbackHandler, "on_step_end", before=lambda *_: counter.hit() and os.kill(os.getpid(), signal.SIGTERM))
    elif point == "checkpoint-save":
        wrap(transformers.Trainer, "_save_rng_state", before=kill_on_hit)
    elif point == "checkpoint-upload":

        def publish(store, key, call):
            if "/checkpoints/checkpoint-" in key and counter.hit():
                if isinstance(store, LocalStore):
                    die()  # the folder is storage itself: nothing is uploaded, kill where it would be
                armed.add("upload")
            return call()

        for cls in (LocalStore, S3Store):
            outermost(cls, "put_dir", publish)
        # One file of the checkpoint is in the bucket, its folder marker is not.
        wrap(S3Store, "_upload", after=lambda *_: "upload" in armed and die())
    elif point in ("between-shards", "shard-upload"):

        def write_shard(store, key, call):
            if not _is_shard(key):
                return call()
            if point == "between-shards":
                written = call()
                kill_on_hit()
                return written
            if counter.hit():
                armed.add("link" if isinstance(store, LocalStore) else "create")
            return call()

        for cls in (LocalStore, S3Store):
            outermost(cls, "write_new", write_shard)
        # Local: the temp file is written, the shard not linked into place yet.
        wrap(os, "link", before=lambda src, dst, *_: "link" in armed and _is_shard(str(dst)) and die())
        # S3: the local copy and its journal entry exist, the PUT has not been sent.
        wrap(S3Store, "_create", before=lambda *_: "create" in armed and die())
    elif point == "any-write":

        def any_write(store, key, call):
            kill_on_hit()
            return call()

        for cls in (LocalStore, S3Store):
            for name in ("write_bytes", "write_new", "put_dir"):
                outermost(cls, name, any_write)
    else:
        raise SystemExit(f"unknown point {point!r}; one of {', '.join(POINTS)}")


def main(argv: list[str]) -> int:
    point, n, separator, *rest = argv
    assert separator == "--", "usage: kill_at.py POINT N -- RUNNER ARGS"
    install(point, int(n))
    from runner.cli import main as runner_main

    return runner_main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

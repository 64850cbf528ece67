"""SIGTERM as preemption: finish the current step or shard, save it, and exit for a retry.

Spot hosts and Kubernetes evictions send SIGTERM and wait a grace period before SIGKILL. Instead of
dying mid-batch, the run notes the request, lets the trainer write a checkpoint at the end of the
step in progress (or finishes the shard being generated), then exits with EXIT_PREEMPTED so the
orchestrator retries, and the retry resumes from what was saved. Under `devices: N` the launcher
passes the SIGTERM on to every rank (runner/distributed.py), and the ranks agree on the step to stop at.
"""

from __future__ import annotations

import signal
import threading

from runner.console import log
from runner.errors import InfraError

EXIT_PREEMPTED = 143
"""128 + SIGTERM, what a shell reports for a process SIGTERM ended: retry the run."""
GRACE_SECONDS = 300
"""Seconds between SIGTERM and SIGKILL that the runner plans for: room to save a checkpoint or
finish a shard. A Kubernetes pod's grace period, and how long torchrun waits for its workers."""

_requested = threading.Event()


class Preempted(InfraError):
    """The run stopped on SIGTERM after saving its progress; rerunning resumes it."""

    exit_code = EXIT_PREEMPTED


def _on_sigterm(signum, frame) -> None:
    if not _requested.is_set():
        log("SIGTERM: stopping after the current training step or shard is saved")
    _requested.set()


def install() -> None:
    """Turn SIGTERM into a stop request (call from the main thread, before work starts)."""
    _requested.clear()
    signal.signal(signal.SIGTERM, _on_sigterm)


def requested() -> bool:
    """Whether a SIGTERM has arrived."""
    return _requested.is_set()


def stop_if_requested(saved: str) -> None:
    """Raise Preempted, naming what was saved, when a SIGTERM has arrived."""
    if _requested.is_set():
        raise Preempted(f"stopped on SIGTERM after saving {saved}; rerun to resume from there")


def trainer_callback():
    """A TrainerCallback that, once SIGTERM arrived, saves a checkpoint at the step's end and stops.

    In data-parallel training the ranks decide together at each step's end: the signals reach them
    a moment apart, and a rank that stopped one step before another would leave that one waiting
    in the next step's gradient all-reduce until the grace period's SIGKILL.
    """
    from transformers import TrainerCallback

    class SaveAndStopOnSigterm(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if _agreed_stop():
                control.should_save = True
                control.should_training_stop = True

    return SaveAndStopOnSigterm()


def _agreed_stop() -> bool:
    """Whether any rank has a stop request; one that learns of it here stops as if signalled."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return _requested.is_set()

    # One flag a step: a 4-byte all-reduce beside the step's own gradient all-reduce.
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    flag = torch.tensor([int(_requested.is_set())], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if not flag.item():
        return False  # a signal arriving after the all-reduce counts at the next step's end, on every rank
    _requested.set()  # so this rank's train() also stops with exit 143 (stop_if_requested)
    return True

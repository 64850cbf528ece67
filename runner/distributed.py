"""Data parallel on one host: `devices: N` runs N processes under torchrun, one per GPU.

Training is the trainer's own DistributedDataParallel (it reads torchrun's environment); generation
gives each rank every N-th missing shard. Rank 0 alone writes the run's single files (manifest,
provenance, adapter, metrics, `_SUCCESS`), after a barrier that waits for every rank's shards.
Without GPUs the ranks run on the CPU with the gloo backend, which is how the tests check it.

Preemption: the launcher (`runner run`) passes a SIGTERM on to torchrun, whose own handler sends it
to every worker and waits `--shutdown-timeout` before SIGKILL; that timeout is the pod's whole grace
period, because torchrun's default (30 s) can cut off a checkpoint upload. Every rank then stops at
the same step (`preemption.trainer_callback` agrees on it), or after its shard, and exits 143. Each
worker notes its exit code in a folder of the launcher's, which returns the worst rank's: torchrun's
own exit status is 1 for any failure and would turn "preempted, retry" into a crash (after a SIGTERM
it also prints a SignalException traceback, which is expected).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence, TypeVar

from runner import preemption
from runner.console import log
from runner.errors import EXIT_DAMAGED, EXIT_INFRA_ERROR, EXIT_USER_ERROR, UserError

Item = TypeVar("Item")

# Ranks' exit codes from least to most telling; the launcher reports the last one any rank gave.
# A rank SIGTERMed by torchrun because another rank failed exits 143, so "retry" (143, then 3)
# ranks below the codes that need a person: a crash (any other code), damaged storage, a user error.
_SEVERITY = {0: 0, preemption.EXIT_PREEMPTED: 1, 130: 2, EXIT_INFRA_ERROR: 3, EXIT_DAMAGED: 5, EXIT_USER_ERROR: 6}
_CRASH = 4
_POLL_SECONDS = 0.05
"""How often a rank waiting in a collective looks for a stop request."""


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """Number of processes in the run (1 when not distributed)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """Whether this process writes the run's single files."""
    return rank() == 0


def launch(manifest: Path, storage: str | None, devices: int, overrides: Sequence[object] = ()) -> int:
    """Run one manifest as `devices` processes under torchrun; the worst rank's exit code.

    A SIGTERM to this process reaches every worker through torchrun, which then waits the pod's
    grace period (not its default 30 s) for them to save before it SIGKILLs any.
    """
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() < devices:
        raise UserError(f"devices: {devices} requested, {torch.cuda.device_count()} GPU(s) visible")
    if not torch.cuda.is_available():
        log(f"no GPU visible: {devices} data-parallel processes share the CPU (gloo)")
    preemption.stop_if_requested("nothing (no rank had started)")
    with tempfile.TemporaryDirectory(prefix="qabench-ranks-") as codes:
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={devices}",
            f"--shutdown-timeout={preemption.GRACE_SECONDS}", "-m", "runner.distributed", codes, "run", str(manifest),
        ]
        if storage:
            command += ["--storage", storage]
        for override in overrides:  # each rank reads the manifest itself, so it needs the same `--set`s
            command += ["--set", str(override)]
        log(f"data parallel over {devices} processes")
        # Its own session: a signal meant for this process group (a terminal's Ctrl-C) reaches
        # torchrun only through this launcher, once; and torchrun hears of this launcher's death.
        torchrun = subprocess.Popen(command, start_new_session=True, preexec_fn=_terminate_with_parent)
        forward = _Forward(torchrun)
        previous = signal.signal(signal.SIGTERM, forward.on_sigterm(signal.getsignal(signal.SIGTERM)))
        try:
            if preemption.requested():  # arrived between the check above and the handler
                forward.send()
            status = _wait(torchrun, forward)
        finally:
            signal.signal(signal.SIGTERM, previous)
        return _worst_rank(Path(codes), devices, status, forward.sent)


class _Forward:
    """Sends torchrun one SIGTERM: a second would interrupt its graceful shutdown's wait."""

    def __init__(self, torchrun: subprocess.Popen):
        self.torchrun, self.sent = torchrun, False

    def send(self) -> None:
        if not self.sent and self.torchrun.poll() is None:
            self.sent = True
            self.torchrun.send_signal(signal.SIGTERM)

    def on_sigterm(self, previous):
        def handler(signum, frame) -> None:
            if callable(previous):
                previous(signum, frame)  # the stop request (runner/preemption.py)
            self.send()

        return handler


def _wait(torchrun: subprocess.Popen, forward: _Forward) -> int:
    """torchrun's exit status; on Ctrl-C the workers are stopped as on SIGTERM and waited for."""
    try:
        return torchrun.wait()
    except KeyboardInterrupt:
        forward.send()
        torchrun.wait()
        raise


def _terminate_with_parent() -> None:
    """In the child before exec: SIGTERM it when the launcher dies (Linux), so no rank is orphaned."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _worst_rank(codes: Path, devices: int, torchrun_status: int, stopped: bool) -> int:
    """The most telling of the ranks' exit codes (see _SEVERITY), each rank's logged when any failed.

    A rank that left no code was killed by a signal, or never started: after a SIGTERM that is the
    preemption (143, its progress up to the last save is kept), otherwise an infrastructure failure.
    """
    missing = preemption.EXIT_PREEMPTED if stopped else (0 if torchrun_status == 0 else EXIT_INFRA_ERROR)
    ranks = []
    for index in range(devices):
        path = codes / f"rank-{index}"
        ranks.append(int(path.read_text()) if path.is_file() else None)
    worst = max((missing if code is None else code for code in ranks), key=lambda code: _SEVERITY.get(code, _CRASH))
    if worst != 0:
        shown = ", ".join(f"rank {i}: {'killed' if code is None else code}" for i, code in enumerate(ranks))
        log(f"data-parallel ranks exited ({shown}); exit {worst}")
    return worst


def _worker(argv: list[str]) -> int:
    """A torchrun worker: `runner` with ARGV, its exit code written to CODES/rank-N for the launcher."""
    codes, *args = argv
    from runner.cli import main

    code = 1  # an exception escaping the CLI is a crash, which Python reports as 1
    try:
        code = main(args)
    except SystemExit as stopped:  # argparse
        code = stopped.code if isinstance(stopped.code, int) else 1
    finally:
        # Written whole: the launcher reads it only after every worker has ended.
        Path(codes, f"rank-{rank()}").write_text(str(code))
    return code


def init() -> None:
    """Join the process group (NCCL on GPUs, gloo on CPU) and pin this rank's GPU."""
    if world_size() == 1:
        return
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")


def barrier() -> None:
    """Wait until every rank reaches this point (or this rank is asked to stop, see _wait_for)."""
    if world_size() > 1:
        import torch.distributed as dist

        _wait_for(dist.barrier(async_op=True))


def share(items: Sequence[Item]) -> list[Item]:
    """This rank's part of a list every rank computed identically (every N-th item)."""
    return list(items[rank() :: world_size()])


def total(values: Sequence[int]) -> list[int]:
    """Element-wise sums over every rank (the values themselves when not distributed)."""
    if world_size() == 1:
        return list(values)
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(list(values), dtype=torch.long, device="cuda" if torch.cuda.is_available() else "cpu")
    _wait_for(dist.all_reduce(tensor, async_op=True))
    return tensor.tolist()


def gather(value: float) -> list[float]:
    """Every rank's `value`, in rank order ([value] alone).

    A blocking collective, for points every rank reaches together, a checkpoint save included:
    the save after a SIGTERM is the one thing a stopping rank must still finish (_wait_for gives up).
    """
    if world_size() == 1:
        return [value]
    import torch
    import torch.distributed as dist

    # float64 holds a float32 loss sum exactly.
    mine = torch.tensor([value], dtype=torch.float64, device="cuda" if torch.cuda.is_available() else "cpu")
    parts = [torch.empty_like(mine) for _ in range(world_size())]
    dist.all_gather(parts, mine)
    return [part.item() for part in parts]


def _wait_for(work) -> None:
    """Wait for a collective; on SIGTERM stop waiting (raise Preempted) unless it completed.

    Every rank hears the SIGTERM, so a rank waiting here for one that is finishing its shard and
    will exit 143 without ever joining would otherwise wait until the grace period's SIGKILL.
    """
    while not work.is_completed():
        if preemption.requested():
            preemption.stop_if_requested("every shard or step it had finished; it was waiting for the other ranks")
        time.sleep(_POLL_SECONDS)
    work.wait()


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))

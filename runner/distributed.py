"""Data parallel on one host: `devices: N` runs N processes under torchrun, one per GPU.

Training is the trainer's own DistributedDataParallel (it reads torchrun's environment); generation
gives each rank every N-th missing shard. Rank 0 alone writes the run's single files (manifest,
provenance, adapter, metrics, `_SUCCESS`), after a barrier that waits for every rank's shards.
Without GPUs the ranks run on the CPU with the gloo backend, which is how the tests check it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence, TypeVar

from runner.console import log
from runner.errors import UserError

Item = TypeVar("Item")


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """Number of processes in the run (1 when not distributed)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """Whether this process writes the run's single files."""
    return rank() == 0


def launch(manifest: Path, storage: str | None, devices: int) -> int:
    """Run one manifest as `devices` processes under torchrun; their exit code (the worst rank's)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() < devices:
        raise UserError(f"devices: {devices} requested, {torch.cuda.device_count()} GPU(s) visible")
    if not torch.cuda.is_available():
        log(f"no GPU visible: {devices} data-parallel processes share the CPU (gloo)")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={devices}", "-m", "runner", "run", str(manifest)]
    if storage:
        command += ["--storage", storage]
    log(f"data parallel over {devices} processes")
    return subprocess.run(command).returncode


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
    """Wait until every rank reaches this point."""
    if world_size() > 1:
        import torch.distributed as dist

        dist.barrier()


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
    dist.all_reduce(tensor)
    return tensor.tolist()

"""Peak memory of one measured span: CUDA allocator peak on a GPU, peak resident set on CPU."""

from __future__ import annotations

from pathlib import Path


def reset_peak_memory(device: str) -> None:
    """Start a fresh peak-memory measurement (GPU allocator stats, or the process's VmHWM on Linux)."""
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
        return
    try:
        # "5" resets the peak resident set size, so each span (a training run, a generation
        # batch) is measured on its own, not against the largest span the process ran before.
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory_bytes(device: str) -> int:
    """Peak GPU memory allocated, or the process's peak resident set size on CPU."""
    if device == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated())
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB

"""Where a result came from: code version, packages, device, model and data identity."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("qabench", "torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate", "datasets", "tokenizers", "pyarrow", "pydantic")


def git_sha() -> str | None:
    """The commit the code came from: QABENCH_GIT_SHA (baked into images, which lack git) or git."""
    if os.environ.get("QABENCH_GIT_SHA"):
        return os.environ["QABENCH_GIT_SHA"]
    try:
        repo = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def version() -> str:
    """`qabench <version> (git <sha>)` for `--version`: the installed package and the commit, `unknown` where not known."""
    try:
        installed = metadata.version("qabench")
    except metadata.PackageNotFoundError:
        installed = "unknown"
    return f"qabench {installed} (git {git_sha() or 'unknown'})"


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that decide a result."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def device_info(device: str) -> dict[str, Any]:
    """The accelerator (or CPU) the run used."""
    import torch

    # torch.__version__ names the build (2.13.0+cpu, +cu130); the package metadata in `packages` does not.
    info: dict[str, Any] = {
        "device": device, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "torch_build": torch.__version__, "torch_cuda_build": torch.version.cuda,
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_bytes=props.total_memory)
    return info


def collect(device: str, model_identity: dict[str, str], data_files: dict[str, str], digest: str) -> dict[str, Any]:
    """The provenance record written next to a run's results."""
    return {
        "digest": digest,
        "git_sha": git_sha(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": platform.node(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "packages": package_versions(),
        "device": device_info(device),
        "model": model_identity,
        "data": data_files,
    }

"""The container tier: the CPU image built by docker/build.sh and run by docker or podman.

Marked `container` and left out of the default run (`just image-test` runs it): it needs a
container engine, and a cold build takes minutes. Without an engine every test skips, saying so.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from conftest import REPO

ENGINE = REPO / "docker" / "engine.sh"
BUILD = REPO / "docker" / "build.sh"
TEST_IMAGE = "localhost/qabench-cpu:container-tier"
TEST_CUDA_IMAGE = "localhost/qabench:container-tier"
MEASURED: list[tuple[str, str]] = []
"""(what, value) pairs the tier measured, printed at the end of the run for docker/README.md."""


def pytest_terminal_summary(terminalreporter):
    if MEASURED:
        terminalreporter.section("container tier: measured")
        for what, value in MEASURED:
            terminalreporter.write_line(f"{what}: {value}")


def engine(*args: str, timeout: float = 1800, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(ENGINE), *args], capture_output=True, text=True, timeout=timeout, **kwargs)


@pytest.fixture(scope="session")
def engine_name() -> str:
    found = engine("name")
    if found.returncode != 0:
        pytest.skip(f"container tier: {found.stderr.strip()}")
    return found.stdout.strip()


def build_image(tag: str, context=REPO, git_sha: str | None = None, target: str = "cpu") -> tuple[int, int]:
    """Build the CPU (or, `target="cuda"`, the CUDA) image from `context` (a checkout) as `tag`; (seconds, bytes)."""
    env = {**os.environ, "QABENCH_CPU_IMAGE" if target == "cpu" else "QABENCH_IMAGE": tag}
    if git_sha:
        env["QABENCH_BUILD_SHA"] = git_sha
    built = subprocess.run([str(context / "docker" / "build.sh"), target], capture_output=True, text=True, env=env, timeout=3600)
    assert built.returncode == 0, built.stderr[-4000:]
    _, seconds, size = built.stdout.split()
    return int(seconds), int(size)


@pytest.fixture(scope="session")
def cpu_image(engine_name) -> str:
    """The CPU image of this checkout (layers cached by the engine, so a rebuild is quick)."""
    seconds, size = build_image(TEST_IMAGE)
    MEASURED.append(("CPU image build (this checkout, engine cache as found)", f"{seconds} s, {size / 1e9:.2f} GB"))
    return TEST_IMAGE


@pytest.fixture(scope="session")
def cuda_image(engine_name) -> str:
    """The CUDA image of this checkout, run here without a GPU."""
    seconds, size = build_image(TEST_CUDA_IMAGE, target="cuda")
    MEASURED.append(("CUDA image build (this checkout, engine cache as found)", f"{seconds} s, {size / 1e9:.2f} GB"))
    return TEST_CUDA_IMAGE

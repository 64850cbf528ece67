"""docker/build.sh and docker/engine.sh without building anything: which engine they pick and what
they ask it to build, run against a fake `docker` that records its arguments."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from conftest import REPO

FAKE_DOCKER = """#!/usr/bin/env bash
# Records each call (arguments NUL-separated); a daemon that answers, an image of 123 bytes.
printf '%s\\0' "$@" >> "$DOCKER_LOG"; echo >> "$DOCKER_LOG"
[ "${DOCKER_DAEMON:-up}" = up ] || { [ "$1" != info ] || exit 1; }
case "$1 $2" in "image inspect") [ "${3:-}" != --format ] || echo 123 ;; esac
exit 0
"""


def _bin(tmp_path: Path) -> Path:
    """A PATH folder with the fake docker and the few programs the scripts need, nothing else."""
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "docker").write_text(FAKE_DOCKER)
    (folder / "docker").chmod(0o755)
    for tool in ("bash", "env", "git", "sed", "dirname", "date", "realpath", "cat"):
        (folder / tool).symlink_to(shutil.which(tool))
    return folder


def _calls(log: Path) -> list[list[str]]:
    return [line.split("\0")[:-1] for line in log.read_text().splitlines() if line]


def test_with_a_docker_daemon_the_cpu_image_is_built_by_docker_from_the_index(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    log = tmp_path / "docker.log"
    # pip's own find-links folder holds a torch wheel, but docker cannot mount it into a build.
    env = {"PATH": str(_bin(tmp_path)), "DOCKER_LOG": str(log), "PIP_FIND_LINKS": str(wheels), "HOME": str(tmp_path)}
    built = subprocess.run([str(REPO / "docker" / "build.sh"), "cpu"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    [build] = [call for call in _calls(log) if call[0] == "build"]
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    assert build[:3] == ["build", "-f", "docker/Dockerfile.cpu"] and build[-1] == "."
    assert "BASE_IMAGE=python:3.11.7-slim-bookworm" in build and any(arg.startswith(f"GIT_SHA={sha}") for arg in build)
    assert "-v" not in build and not any(arg.startswith("TORCH_") for arg in build), "the PyTorch CPU index, not a mounted folder"
    tag, seconds, size = built.stdout.split()
    assert (tag, size) == (f"qabench-cpu:{sha[:7]}", "123") and seconds.isdigit(), "TAG SECONDS BYTES"

    env["QABENCH_TORCH_WHEELS"] = str(wheels)
    refused = subprocess.run([str(REPO / "docker" / "build.sh"), "cpu"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "docker build cannot mount a folder" in refused.stderr


def test_without_a_daemon_or_buildah_and_podman_there_is_no_engine_and_it_says_what_to_install(tmp_path):
    env = {"PATH": str(_bin(tmp_path)), "DOCKER_LOG": str(tmp_path / "docker.log"), "DOCKER_DAEMON": "down", "HOME": str(tmp_path)}
    found = subprocess.run([str(REPO / "docker" / "engine.sh"), "name"], env=env, capture_output=True, text=True, timeout=60)
    assert found.returncode == 3 and "apt-get install buildah podman" in found.stderr
    env.pop("DOCKER_DAEMON")
    assert subprocess.run([str(REPO / "docker" / "engine.sh"), "name"], env=env, capture_output=True, text=True, timeout=60).stdout == "docker\n"

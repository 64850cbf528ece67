"""The CPU image built and run by a real container engine: exit codes, signals, file ownership, layers.

Each run mounts host folders the way a user would (`-v runs:/work/runs`), with no network.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from container.conftest import ENGINE, MEASURED, build_image, engine
from runner.preemption import EXIT_PREEMPTED

pytestmark = pytest.mark.container

CONTAINER_MANIFESTS = "/in"
RUN_MANIFEST = {
    "name": "container-tier-smollm2-lora",
    "model": {"package": "smollm2-135m"},
    "data": {"root": "/app/data/synthetic", "datasets": ["synthetic_yes_no"], "max_eval_examples": 6},
    "method": {"kind": "lora", "r": 4, "alpha": 8, "target_modules": "attention"},
    "train": {"steps": 30, "batch_size": 2, "learning_rate": 1.0e-3, "max_seq_length": 96, "save_steps": 1000, "logging_steps": 1, "heldout_examples": 0},
    "decoding": {"kind": "greedy", "max_new_tokens": 4, "batch_size": 6},
    "eval": {"shard_size": 6},
}


def host_folder(path: Path, mode: int = 0o777) -> Path:
    """A host folder the container's uid 1000 can (0777) or cannot (0555) write, whoever runs the tests."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(mode)
    return path


@pytest.fixture
def mounts(tmp_path):
    manifests = host_folder(tmp_path / "manifests", 0o755)
    (manifests / "run.yaml").write_text(yaml.safe_dump(RUN_MANIFEST, sort_keys=False))
    runs, cache = host_folder(tmp_path / "runs"), host_folder(tmp_path / "cache")
    volumes = ["-v", f"{manifests}:{CONTAINER_MANIFESTS}:ro", "-v", f"{runs}:/work/runs", "-v", f"{cache}:/cache"]
    return {"manifests": manifests, "runs": runs, "volumes": volumes}


def run_image(image: str, volumes: list[str], *args: str, name: str | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    named = ["--name", name] if name else []
    return engine("run", "--rm", "--network", "none", "-e", "HF_HUB_OFFLINE=1", *named, *volumes, image, *args, timeout=timeout)


def test_the_image_validates_every_shipped_manifest_and_names_its_commit(cpu_image):
    validated = engine("run", "--rm", "--network", "none", "--entrypoint", "qabench", cpu_image, "validate", "manifests")
    assert validated.returncode == 0, validated.stderr[-3000:]
    on_host = subprocess.run([sys.executable, "-m", "runner", "validate", "manifests"], cwd=REPO, capture_output=True, text=True)
    assert validated.stdout == on_host.stdout and "valid" in validated.stdout, "the image sees the same manifests as this checkout"
    MEASURED.append(("validate manifests in the image", f"exit {validated.returncode}"))
    version = engine("run", "--rm", "--network", "none", "--entrypoint", "qabench", cpu_image, "--version")
    assert version.returncode == 0 and re.fullmatch(r"qabench \S+ \(git [0-9a-f]{40}(-dirty)?\)", version.stdout.strip())


def test_a_broken_manifest_is_exit_2_at_its_file_and_line_before_any_model_loads(cpu_image, mounts):
    broken = dict(RUN_MANIFEST, decoding={"kind": "greedy", "max_new_tokens": 0})
    text = yaml.safe_dump(broken, sort_keys=False)
    line = text.splitlines().index("  max_new_tokens: 0") + 1
    (mounts["manifests"] / "broken.yaml").write_text(text)
    result = run_image(cpu_image, mounts["volumes"], f"{CONTAINER_MANIFESTS}/broken.yaml")
    MEASURED.append(("a broken manifest", f"exit {result.returncode}"))
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"{CONTAINER_MANIFESTS}/broken.yaml:{line}: decoding.max_new_tokens" in result.stderr
    assert "Traceback" not in result.stderr
    assert not any(mounts["runs"].iterdir()), "nothing written for a manifest that does not validate"


def test_a_stopped_container_exits_143_and_the_rerun_resumes_finishes_and_then_finds_it_complete(cpu_image, mounts):
    manifest = f"{CONTAINER_MANIFESTS}/run.yaml"
    name = f"qabench-tier-{os.getpid()}"
    command = [str(ENGINE), "run", "--rm", "--network", "none", "-e", "HF_HUB_OFFLINE=1", "--name", name, *mounts["volumes"], cpu_image, manifest]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = time.monotonic()
    try:
        while not _logged_steps(mounts["runs"]) >= 3:
            assert process.poll() is None, "the run ended before it could be stopped: " + process.stderr.read()[-3000:]
            assert time.monotonic() - started < 600, "training did not start within 10 minutes"
            time.sleep(0.5)
        stopped = engine("stop", "--time", "120", name)
        assert stopped.returncode == 0, stopped.stderr
        _, stderr = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            engine("stop", "--time", "1", name)
            process.kill()
    MEASURED.append(("stopped mid-training (SIGTERM through tini)", f"exit {process.returncode}"))
    assert process.returncode == EXIT_PREEMPTED, stderr[-3000:]
    assert "SIGTERM" in stderr and "Traceback" not in stderr
    [checkpoint] = mounts["runs"].rglob("checkpoints/checkpoint-*")
    assert (checkpoint / "qabench_complete").is_file(), "the checkpoint written on SIGTERM is complete"

    resumed = run_image(cpu_image, mounts["volumes"], manifest)
    MEASURED.append(("rerun after the stop", f"exit {resumed.returncode}"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming training from {checkpoint.name}" in resumed.stdout
    assert len(list(mounts["runs"].rglob("_SUCCESS"))) == 2, "the training and the evaluation both completed"

    again = run_image(cpu_image, mounts["volumes"], manifest)
    MEASURED.append(("rerun of a finished run", f"exit {again.returncode}"))
    assert again.returncode == 0 and "already complete" in again.stdout

    # What the container wrote, the host's users can read: files 0644, folders 0755, owned by uid 1000.
    written = [path for path in mounts["runs"].rglob("*")]
    assert written
    for path in written:
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), f"{path}: {oct(mode)}"
        with open(path, "rb") if path.is_file() else open(os.devnull, "rb") as readable:
            readable.read(1)
    metrics = next(mounts["runs"].rglob("metrics.json"))
    if os.geteuid() == 0 and engine("name").stdout.strip() == "podman":
        assert metrics.stat().st_uid == 1000, "rootful podman keeps the container's uid"


def _logged_steps(runs: Path) -> int:
    logs = list(runs.rglob("train_log.jsonl"))
    return len(logs[0].read_text().splitlines()) if logs else 0


def test_a_host_folder_the_container_cannot_write_is_exit_2_naming_the_uid(cpu_image, mounts, tmp_path):
    readonly = host_folder(tmp_path / "readonly-runs", 0o555)
    volumes = [v.replace(str(mounts["runs"]), str(readonly)) for v in mounts["volumes"]]
    result = run_image(cpu_image, volumes, f"{CONTAINER_MANIFESTS}/run.yaml")
    MEASURED.append(("host storage folder not writable by uid 1000", f"exit {result.returncode}"))
    assert result.returncode == 2, result.stderr[-3000:]
    assert "uid 1000" in result.stderr and "Traceback" not in result.stderr
    assert not any(readonly.iterdir())


def _snippet_that_adds_the_user(dockerfile: Path) -> str:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    [run] = [line.split(None, 1)[1] for line in text.splitlines() if line.startswith("RUN ") and "useradd" in line]
    return run


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cpu"])
@pytest.mark.parametrize("existing_user", [False, True], ids=["plain-base", "base-with-uid-1000"])
def test_the_user_step_makes_uid_1000_qabench_even_where_the_base_has_a_uid_1000(engine_name, dockerfile, existing_user):
    base = subprocess.run([str(REPO / "docker" / "build.sh"), "base"], capture_output=True, text=True, timeout=900)
    assert base.returncode == 0, base.stderr
    # The step under the Dockerfiles' own SHELL (bash with pipefail), as docker-format builds run it.
    prepare = "useradd --uid 1000 --create-home ubuntu && " if existing_user else ""
    script = f'{prepare}bash -o pipefail -c "$1" && getent passwd 1000 && stat -c %u /work/runs'
    result = engine("run", "--rm", "--network", "host", "--user", "0", "--entrypoint", "bash", base.stdout.strip(), "-c", script, "step", _snippet_that_adds_the_user(REPO / "docker" / dockerfile))
    assert result.returncode == 0, result.stderr[-3000:]
    user, owner = result.stdout.strip().splitlines()[-2:]
    assert user.startswith("qabench:x:1000:1000:") and owner == "1000"


def _checkout_copy(destination: Path) -> Path:
    """The files a clean checkout of this tree has (tracked and untracked-but-not-ignored)."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True)
    for name in filter(None, listed.stdout.decode().split("\0")):
        source = REPO / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


def _layers(tag: str) -> list[str]:
    listed = engine("layers", tag)
    assert listed.returncode == 0, listed.stderr
    return listed.stdout.split()


def _layers_after_dependencies(dockerfile: Path) -> int:
    """How many filesystem layers follow the dependency install (RUN/COPY/ADD after it)."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    ops = [line.split(None, 1) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    install = max(i for i, (op, args) in enumerate(ops) if op == "RUN" and "pip install" in args and "-e ." not in args)
    return sum(op in ("RUN", "COPY", "ADD") for op, _ in ops[install + 1 :])


def test_a_new_commit_reuses_every_layer_and_a_source_edit_reuses_the_dependency_layer(engine_name, tmp_path):
    context = _checkout_copy(tmp_path / "checkout")
    tags = [f"localhost/qabench-cpu:layer-test-{i}" for i in range(3)]
    try:
        first_seconds, _ = build_image(tags[0], context, git_sha="a" * 40)
        second_seconds, _ = build_image(tags[1], context, git_sha="b" * 40)
        first, second = _layers(tags[0]), _layers(tags[1])
        assert first[:-1] == second[:-1] and first[-1] != second[-1], "a new commit adds one layer (/app/GIT_SHA) and rebuilds nothing else"
        for tag, sha in zip(tags[:2], ["a" * 40, "b" * 40]):
            stamped = engine("run", "--rm", "--network", "none", "--entrypoint", "bash", tag, "-c", 'echo "$QABENCH_GIT_SHA $(cat /app/GIT_SHA)"')
            assert stamped.stdout.split() == [sha, sha], "each image carries its own commit"

        source = context / "runner" / "__init__.py"
        source.write_text(source.read_text() + "# one-line source edit\n")
        edited_seconds, _ = build_image(tags[2], context, git_sha="c" * 40)
        before, after = _layers(tags[0]), _layers(tags[2])
        reused = len(before) - _layers_after_dependencies(REPO / "docker" / "Dockerfile.cpu")
        assert after[:reused] == before[:reused], "the base, system-package and dependency layers are reused"
        assert after[reused:-1] != before[reused:-1], "the edited source is in a new layer"
        MEASURED.append(("rebuild for a new commit (same sources)", f"{second_seconds} s"))
        MEASURED.append(("rebuild after a one-line source edit", f"{edited_seconds} s"))
        MEASURED.append(("build of a copied checkout (engine cache as found)", f"{first_seconds} s"))
    finally:
        engine("rmi", *tags)


def test_the_cuda_image_trains_and_evaluates_a_tiny_model_without_a_gpu(cuda_image, tiny_models, small_data, tmp_path):
    # Without a GPU the locked CUDA build of torch runs on the CPU: its packages (trl, peft,
    # bitsandbytes, the runner) work together end to end, not just import.
    model = shutil.copytree(tiny_models["llama"], tmp_path / "in" / "model")
    shutil.copytree(small_data, tmp_path / "in" / "data")
    manifest = {
        "name": "cuda-image-tiny-lora",
        "model": {"path": "/in/model"},
        "data": {"root": "/in/data", "datasets": ["synthetic_yes_no"], "max_eval_examples": 4},
        "method": {"kind": "lora", "r": 2, "alpha": 4, "target_modules": "attention"},
        "train": {"steps": 2, "batch_size": 2, "learning_rate": 1.0e-3, "heldout_examples": 0},
        "decoding": {"kind": "greedy", "max_new_tokens": 4, "batch_size": 4},
    }
    (tmp_path / "in" / "run.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    for path in [tmp_path / "in", *(tmp_path / "in").rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    runs = host_folder(tmp_path / "runs")
    result = run_image(cuda_image, ["-v", f"{tmp_path / 'in'}:/in:ro", "-v", f"{runs}:/work/runs"], "/in/run.yaml")
    MEASURED.append(("CUDA image: tiny LoRA training and evaluation on the CPU", f"exit {result.returncode}"))
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert len(list(runs.rglob("_SUCCESS"))) == 2 and model.is_dir()
    evaluation = next(path.parent for path in runs.rglob("metrics.json") if (path.parent / "predictions").is_dir())
    provenance = json.loads((evaluation / "provenance.json").read_text())
    device = provenance["device"]
    assert (device["device"], device["torch_cuda_build"]) == ("cpu", "13.0") and device["torch_build"].endswith("+cu130"), "the CUDA build of torch, on the CPU"

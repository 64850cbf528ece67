"""What `just grid` hands a container, and which recipes may reach the hub.

No Docker engine runs here: docker/run-args.sh (the recipe's argument builder) runs with a made-up
environment and home, and the recipe itself runs with a `docker` on PATH that records its calls.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from conftest import REPO, SYNTHETIC, write_manifest

BUILDER = REPO / "docker" / "run-args.sh"
JUST = Path(sys.executable).parent / "just"
SECRETS = {"AWS_SECRET_ACCESS_KEY": "aws-secret-7f3e9c", "AWS_ACCESS_KEY_ID": "AKIAFAKE7F3E9C", "HF_TOKEN": "hf_token_7f3e9c"}


def _environment(home: Path, **extra: str) -> dict[str, str]:
    """A bare environment: PATH, HOME and `extra` (nothing of this shell's AWS_*, HF_* or QABENCH_*)."""
    return {"PATH": os.environ["PATH"], "HOME": str(home), **extra}


def _docker_args(tmp_path: Path, **extra: str) -> list[str]:
    result = subprocess.run([str(BUILDER)], cwd=tmp_path, env=_environment(tmp_path / "home", **extra), capture_output=True)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode().split("\0")[:-1]


def _pairs(args: list[str]) -> list[tuple[str, str]]:
    assert len(args) % 2 == 0 and all(flag in ("-e", "-v") for flag in args[::2]), args
    return list(zip(args[::2], args[1::2]))


def test_credentials_pass_by_name_with_aws_folder_mounted_read_only(tmp_path):
    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True)
    bundle = tmp_path / "corp-ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    args = _docker_args(
        tmp_path, AWS_PROFILE="research", AWS_DEFAULT_REGION="eu-west-1", AWS_ENDPOINT_URL_S3="https://s3.example.com",
        AWS_CA_BUNDLE=str(bundle), HF_ENDPOINT="https://hub.example.com", HF_HUB_OFFLINE="1", QABENCH_X="1",
        QABENCH_LEASE_SECONDS="60", QABENCH_IMAGE="qabench:1", QABENCH_WORKDIR="/host/work", QABENCH_GIT_SHA="abc", **SECRETS,
    )
    pairs = _pairs(args)
    passed = {value for flag, value in pairs if flag == "-e"}
    assert passed >= {
        "AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
        "HF_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE", "QABENCH_X", "QABENCH_LEASE_SECONDS",
    }
    # Host-side settings stay on the host: the image, its baked-in commit, host folders.
    assert not passed & {"QABENCH_IMAGE", "QABENCH_GIT_SHA", "QABENCH_WORKDIR", "QABENCH_STORAGE"}
    assert ("-v", f"{home / '.aws'}:/home/qabench/.aws:ro") in pairs
    assert ("-v", f"{bundle}:/run/qabench/AWS_CA_BUNDLE:ro") in pairs and ("-e", "AWS_CA_BUNDLE=/run/qabench/AWS_CA_BUNDLE") in pairs
    assert ("-v", f"{tmp_path / 'runs'}:/work/runs") in pairs
    # `ps` shows a process's arguments: no secret may be one.
    assert not [a for a in args for secret in SECRETS.values() if secret in a]


def test_unset_and_empty_variables_are_not_passed(tmp_path):
    pairs = _pairs(_docker_args(tmp_path, AWS_PROFILE=""))
    assert pairs == [("-v", f"{tmp_path / 'runs'}:/work/runs")], "no ~/.aws, no token file, nothing set"


def test_hub_login_token_file_is_mounted_when_hf_token_is_unset(tmp_path):
    token = tmp_path / "home" / ".cache" / "huggingface" / "token"
    token.parent.mkdir(parents=True)
    token.write_text("hf_from_login")
    pairs = _pairs(_docker_args(tmp_path))
    assert ("-v", f"{token}:/run/qabench/hf-token:ro") in pairs and ("-e", "HF_TOKEN_PATH=/run/qabench/hf-token") in pairs
    # HF_TOKEN, when set, wins over the file (as it does for huggingface_hub): the file stays out.
    with_token = _pairs(_docker_args(tmp_path, HF_TOKEN="hf_x"))
    assert ("-e", "HF_TOKEN") in with_token and not [p for p in with_token if "hf-token" in p[1]]


def test_storage_is_passed_when_s3_and_mounted_when_a_folder(tmp_path):
    assert ("-e", "QABENCH_STORAGE") in _pairs(_docker_args(tmp_path, QABENCH_STORAGE="s3://bucket/runs"))
    pairs = _pairs(_docker_args(tmp_path, QABENCH_STORAGE=str(tmp_path / "elsewhere")))
    assert ("-v", f"{tmp_path / 'elsewhere'}:/work/runs") in pairs and (tmp_path / "elsewhere").is_dir()
    assert ("-e", "QABENCH_STORAGE") not in pairs


def test_a_named_file_that_does_not_exist_is_refused(tmp_path):
    result = subprocess.run([str(BUILDER)], cwd=tmp_path, env=_environment(tmp_path, AWS_SHARED_CREDENTIALS_FILE="/no/such/file"), capture_output=True, text=True)
    assert result.returncode == 2 and "AWS_SHARED_CREDENTIALS_FILE=/no/such/file: no such file" in result.stderr


FAKE_DOCKER = """#!/usr/bin/env bash
# Records each call (arguments NUL-separated, then what HF_HUB_OFFLINE was) and answers the plan.
{ printf '%s\\0' "$@"; echo "HF_HUB_OFFLINE=${HF_HUB_OFFLINE-unset}"; } >> "$DOCKER_LOG"
case " $* " in *" --schedule "*) echo manifests/grid/first.yaml; echo manifests/grid/second.yaml ;; esac
"""


def test_grid_recipe_runs_each_manifest_in_docker_with_the_settings_and_no_forced_offline(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FAKE_DOCKER)
    (bin_dir / "docker").chmod(0o755)
    log = tmp_path / "docker.log"
    env = _environment(
        tmp_path / "home", PATH=f"{bin_dir}:{os.environ['PATH']}", DOCKER_LOG=str(log), QABENCH_IMAGE="registry/qabench:1",
        QABENCH_STORAGE=str(tmp_path / "runs"), AWS_PROFILE="research", QABENCH_X="1", **SECRETS,
    )
    overrides = ["--set", "decoding.batch_size=4", "--set=seed=7"]
    result = subprocess.run([str(JUST), "grid", "manifests/grid", "--storage", "s3://bucket/x", *overrides], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    calls = [entry.split("\0") for entry in log.read_text().split("\n") if entry]
    assert len(calls) == 4  # validate, plan, then one run per scheduled manifest
    args_of = [c[:-1] for c in calls]
    # The overrides reach the check and the plan as well as each run: they change what runs.
    assert [a[-6:] for a in args_of[:2]] == [["runner", "validate", "manifests/grid", *overrides], ["plan", "manifests/grid", "--schedule", *overrides]]
    assert [a[-6:] for a in args_of[2:]] == [[f"manifests/grid/{m}.yaml", "--storage", "s3://bucket/x", *overrides] for m in ("first", "second")]
    for args in args_of:
        assert {"AWS_PROFILE", "QABENCH_X", "HF_TOKEN"} <= set(args) and f"{tmp_path / 'runs'}:/work/runs" in args
        assert not [a for a in args for secret in SECRETS.values() if secret in a]
    # The justfile no longer exports HF_HUB_OFFLINE=1 to every recipe: the container decides by the user's setting.
    assert {c[-1] for c in calls} == {"HF_HUB_OFFLINE=unset"} and "HF_HUB_OFFLINE" not in {a for args in args_of for a in args}


def test_just_run_reaches_the_hub_unless_the_user_sets_hf_hub_offline(small_data, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed once the probe is: the "hub" refuses connections
    manifest = write_manifest(tmp_path, "hub-model", model={"hub": "org/tiny"}, data={"root": str(small_data), "datasets": SYNTHETIC}, method={"kind": "none"})
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_HOME=str(tmp_path / "hf"))
    result = subprocess.run([str(JUST), "run", str(manifest), "--storage", str(tmp_path / "runs")], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    # It tried the hub (a retry may succeed: exit 3), rather than failing offline (exit 2).
    assert result.returncode == 3, result.stderr
    assert f"cannot resolve the revision of org/tiny on the hub (http://127.0.0.1:{port})" in result.stderr


def test_tests_and_demos_stay_offline():
    # The tests (and CI, which runs `just test`) never touch the network; the demos use packaged models only.
    for recipe in ("test", "fuzz", "demo", "demo-methods"):
        shown = subprocess.run([str(JUST), "--show", recipe], cwd=REPO, capture_output=True, text=True, check=True).stdout
        commands = [line.split("{{")[0] for line in shown.splitlines() if "-m pytest" in line or "-m runner run" in line]
        assert commands and all("HF_HUB_OFFLINE=1 " in prefix for prefix in commands), shown

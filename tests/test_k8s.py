"""Kubernetes output: valid against the API schema, one index per manifest, bad input refused,
and the pod command run outside a cluster against a real S3 server."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from conftest import CHECKOV_OFFLINE_ENV, NO_CHECKOV, REPO, checkov_command
from runner.cli import main
from runner.k8s import CACHE, CONTAINER, TMP, collect, job_settings, render

KUBERNETES_VERSION = "1.37.0"
"""The newest version kubernetes-validate 1.37.0 ships schemas for."""
GRID = REPO / "manifests" / "grid"
IMAGE = "registry.example.com/qabench:1a2b3c4"
STORAGE = "s3://qabench-runs/grid"


def _render(tmp_path: Path, *extra: str, folder: Path = GRID) -> Path:
    out = tmp_path / "job.yaml"
    assert main(["k8s", str(folder), "--image", IMAGE, "--storage", STORAGE, "--out", str(out), "--mount-path", "/app/manifests/grid", *extra]) == 0
    return out


def _documents(path: Path) -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(path.read_text())}


def test_rendered_objects_pass_kubernetes_validate_strict(tmp_path, capsys):
    out = _render(tmp_path, "--parallelism", "4", "--namespace", "research", "--data-claim", "unifiedqa")
    binary = Path(sys.executable).parent / "kubernetes-validate"
    result = subprocess.run([str(binary), "--strict", "-k", KUBERNETES_VERSION, str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed for resource configmap/" in result.stdout and "passed for resource job/qabench-grid" in result.stdout


def test_job_has_one_index_per_manifest_in_the_plans_schedule_order(tmp_path, capsys):
    documents = _documents(_render(tmp_path, "--parallelism", "4"))
    configmap, job = documents["ConfigMap"], documents["Job"]
    capsys.readouterr()
    assert main(["plan", str(GRID), "--schedule"]) == 0
    names = [Path(line).name for line in capsys.readouterr().out.split()]
    assert sorted(names) == sorted(f.name for f in GRID.glob("*.yaml"))
    assert sorted(configmap["data"]) == sorted(names)
    assert all(configmap["data"][n] == (GRID / n).read_text() for n in names)
    assert configmap["immutable"] is True
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", len(names), 4)
    pod = spec["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "manifests")["configMap"]
    assert volume["name"] == configmap["metadata"]["name"]
    assert volume["items"] == [{"key": n, "path": f"{i}.yaml"} for i, n in enumerate(names)]
    container = pod["containers"][0]
    assert container["args"] == ["/app/manifests/grid/$(JOB_COMPLETION_INDEX).yaml", "--storage", STORAGE]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["envFrom"] == [{"secretRef": {"name": "qabench-credentials"}}]


def test_failure_policy_fails_the_index_on_user_error_and_ignores_preemption(tmp_path, capsys):
    spec = _documents(_render(tmp_path, "--retries", "5"))["Job"]["spec"]
    assert spec["backoffLimitPerIndex"] == 5
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert rules[1] == {"action": "FailIndex", "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [2]}}


def test_rendering_twice_gives_the_same_bytes(tmp_path, capsys):
    first = _render(tmp_path).read_bytes()
    assert _render(tmp_path).read_bytes() == first


def test_default_mount_path_is_the_folders_place_below_the_image_workdir(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    assert main(["k8s", "manifests/seed-study", "--image", IMAGE, "--storage", STORAGE]) == 0
    job = list(yaml.safe_load_all(capsys.readouterr().out))[2]
    assert job["metadata"]["name"] == "qabench-seed-study"
    mount = job["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][0]
    # ../../data/unifiedqa in a manifest then means /app/data/unifiedqa, as in the checkout.
    assert mount == {"name": "manifests", "mountPath": "/app/manifests/seed-study", "readOnly": True}


def test_data_claim_is_mounted_where_the_manifests_look_for_data(tmp_path, capsys):
    pod = _documents(_render(tmp_path, "--data-claim", "unifiedqa"))["Job"]["spec"]["template"]["spec"]
    assert {"name": "data", "mountPath": "/app/data/unifiedqa", "readOnly": True} in pod["containers"][0]["volumeMounts"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "unifiedqa", "readOnly": True}} in pod["volumes"]


@pytest.mark.parametrize(
    "image, message",
    [
        ("qabench", "has no tag"),
        ("registry.example.com:5000/team/qabench", "has no tag"),
        ("qabench:latest", "`latest` moves"),
        ("qabench@sha256:abc", "64 hex digits"),
    ],
)
def test_image_without_a_fixed_version_is_refused(tmp_path, capsys, image, message):
    assert main(["k8s", str(GRID), "--image", image, "--storage", STORAGE, "--mount-path", "/m"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_image_pinned_by_digest_or_registry_port_and_tag_is_accepted(tmp_path, capsys):
    for image in ("qabench@sha256:" + "0" * 64, "registry.example.com:5000/team/qabench:v1"):
        assert main(["k8s", str(GRID), "--image", image, "--storage", STORAGE, "--mount-path", "/m", "--out", str(tmp_path / "j.yaml")]) == 0


@pytest.mark.parametrize("storage", ["runs", "file:///shared/runs", "/mnt/runs", "gs://bucket/x"])
def test_storage_that_pods_cannot_share_is_refused(capsys, storage):
    assert main(["k8s", str(GRID), "--image", IMAGE, "--storage", storage, "--mount-path", "/m"]) == 2
    assert "pods on different nodes cannot share a local folder; use s3://bucket/prefix" in capsys.readouterr().err


@pytest.mark.parametrize("storage, message", [("s3://", "'' is not a bucket name"), ("s3://b/runs", "'b' is not a bucket name")])
def test_s3_storage_that_is_not_a_bucket_says_why(capsys, storage, message):
    assert main(["k8s", str(GRID), "--image", IMAGE, "--storage", storage, "--mount-path", "/m"]) == 2
    err = capsys.readouterr().err
    assert f"--storage {storage!r}: {message}" in err and "local folder" not in err


def test_every_bad_argument_is_reported_at_once(capsys):
    assert main(["k8s", str(GRID), "--image", "qabench", "--storage", "runs", "--name", "Bad_Name", "--parallelism", "0"]) == 2
    err = capsys.readouterr().err
    assert all(text in err for text in ("has no tag", "cannot share a local folder", "--name 'Bad_Name'", "--parallelism must be at least 1"))


def test_folder_with_an_invalid_manifest_is_refused_with_its_problems(tmp_path, capsys):
    folder = tmp_path / "set"
    folder.mkdir()
    shutil.copy(GRID / "gemma-2b-none-0-shot-greedy.yaml", folder)
    bad = folder / "broken.yaml"
    bad.write_text((GRID / "gemma-2b-lora-0-shot-greedy.yaml").read_text().replace("  r: 16\n", "  r: 0\n"))
    line = bad.read_text().splitlines().index("  r: 0") + 1
    out = tmp_path / "job.yaml"
    assert main(["k8s", str(folder), "--image", IMAGE, "--storage", STORAGE, "--mount-path", "/m", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:{line}: method.r: Input should be greater than or equal to 1" in err
    assert not out.exists()


def test_folder_whose_manifests_exceed_a_configmap_is_refused(tmp_path, capsys):
    folder = tmp_path / "big"
    folder.mkdir()
    text = (GRID / "gemma-2b-none-0-shot-greedy.yaml").read_text()
    padding = "# " + "x" * 998 + "\n"
    for index in range(3):
        (folder / f"m{index}.yaml").write_text(text + padding * 400)  # 3 × ~400 kB
    assert main(["k8s", str(folder), "--image", IMAGE, "--storage", STORAGE, "--mount-path", "/m"]) == 2
    assert "over a ConfigMap's 1,048,576: split the folder" in capsys.readouterr().err


def test_manifests_in_subfolders_are_refused(tmp_path, capsys):
    folder = tmp_path / "set"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(GRID / "gemma-2b-none-0-shot-greedy.yaml", folder / "sub")
    assert main(["k8s", str(folder), "--image", IMAGE, "--storage", STORAGE, "--mount-path", "/m"]) == 2
    assert "manifests in subfolders" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Credentials, the shared model cache, GPUs per `devices`.

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIAK8SLEAK0001", "AWS_SECRET_ACCESS_KEY": "k8s-leak-secret-0002", "HF_TOKEN": "hf_k8s_leak_0003"}


def _kubernetes_validate(path: Path) -> str:
    binary = Path(sys.executable).parent / "kubernetes-validate"
    result = subprocess.run([str(binary), "--strict", "-k", KUBERNETES_VERSION, str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_credentials_reach_pods_only_by_reference_to_named_secrets(tmp_path, monkeypatch, capsys):
    for variable, value in CREDENTIALS.items():
        monkeypatch.setenv(variable, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://s3-k8s-leak.example.com")
    out = _render(tmp_path, "--secret", "s3-credentials", "--secret", "team-defaults", "--secret-key", "HF_TOKEN=hf-token:token",
                  "--secret-key", "AWS_ENDPOINT_URL=s3-endpoint:url", "--model-cache-claim", "models")
    text = out.read_text()
    assert not [v for v in (*CREDENTIALS.values(), "s3-k8s-leak") if v in text + "".join(capsys.readouterr())]
    container = _documents(out)["Job"]["spec"]["template"]["spec"]["containers"][0]
    assert container["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}, {"secretRef": {"name": "team-defaults"}}]
    assert container["env"][-2:] == [
        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}},
        {"name": "AWS_ENDPOINT_URL", "valueFrom": {"secretKeyRef": {"name": "s3-endpoint", "key": "url"}}},
    ]
    assert "passed for resource job/qabench-grid" in _kubernetes_validate(out)


def test_secret_keys_alone_name_no_default_secret(tmp_path, capsys):
    container = _documents(_render(tmp_path, "--secret-key", "HF_TOKEN=hf-token:token"))["Job"]["spec"]["template"]["spec"]["containers"][0]
    assert "envFrom" not in container, "qabench-credentials may not exist; a missing envFrom Secret stops the pod from starting"


@pytest.mark.parametrize(
    "storage",
    [f"s3://{CREDENTIALS['AWS_ACCESS_KEY_ID']}:{CREDENTIALS['AWS_SECRET_ACCESS_KEY']}@bucket/runs",
     f"s3://bucket/runs?X-Amz-Credential={CREDENTIALS['AWS_ACCESS_KEY_ID']}&X-Amz-Signature={CREDENTIALS['AWS_SECRET_ACCESS_KEY']}"],
    ids=["userinfo", "query"],
)
def test_storage_carrying_credentials_is_refused_without_echoing_them(tmp_path, capsys, storage):
    out = tmp_path / "job.yaml"
    assert main(["k8s", str(GRID), "--image", IMAGE, "--storage", storage, "--mount-path", "/m", "--out", str(out)]) == 2
    printed = "".join(capsys.readouterr())
    assert "pods read them from the Secret (--secret, --secret-key)" in printed and "cannot share a local folder" not in printed
    assert not [v for v in CREDENTIALS.values() if v in printed] and not out.exists()


def test_every_bad_secret_argument_is_reported_at_once(capsys):
    keys = ["HF_TOKEN", "HF_TOKEN=hf-token", "1X=s:k", "HF_HOME=s:k", "X=Bad_Secret:k", "Y=s:k", "Y=t:k"]
    args = ["k8s", str(GRID), "--image", IMAGE, "--storage", STORAGE, "--mount-path", "/m", "--secret", "Bad", "--model-cache-claim", "no_claim"]
    assert main([*args, *(a for key in keys for a in ("--secret-key", key))]) == 2
    err = capsys.readouterr().err
    assert err.count("write VARIABLE=SECRET:KEY") == 3, err
    for text in ("HF_HOME is set by the Job itself", "'Bad_Secret' is not a Kubernetes object name", "--secret-key Y=...: given twice",
                 "--secret 'Bad': not a Kubernetes object name", "--model-cache-claim 'no_claim'"):
        assert text in err


def test_model_cache_claim_is_shared_by_every_pod_and_the_work_folder_is_not(tmp_path, capsys):
    pod = _documents(_render(tmp_path, "--model-cache-claim", "hf-models"))["Job"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert {"name": "models", "persistentVolumeClaim": {"claimName": "hf-models"}} in pod["volumes"]
    assert {"name": "models", "mountPath": "/models"} in container["volumeMounts"]
    assert (env["HF_HOME"], env["QABENCH_MODEL_CACHE"]) == ("/models/huggingface", "/models/qabench")
    assert env["QABENCH_WORKDIR"] == f"{CACHE}/work", "the S3 store's staging folder stays per pod"
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["k8s", "--help"])
    assert "concurrent downloads are safe (huggingface_hub locks each file)" in " ".join(capsys.readouterr().out.split())


def _folder_with_devices(tmp_path: Path, devices: dict[str, int]) -> Path:
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in sorted(GRID.glob("gemma-*-0-shot-greedy.yaml"))[:8]:
        text = name.read_text()
        n = devices.get(name.name, 1)
        (folder / name.name).write_text(text + (f"devices: {n}\n" if n != 1 else ""))
    return folder


def test_one_job_per_gpu_count_each_in_the_plans_order_requesting_its_gpus(tmp_path, capsys):
    names = [p.name for p in sorted(GRID.glob("gemma-*-0-shot-greedy.yaml"))[:8]]
    devices = {names[1]: 2, names[4]: 2, names[6]: 4}
    folder = _folder_with_devices(tmp_path, devices)
    out = tmp_path / "job.yaml"
    assert main(["k8s", str(folder), "--image", IMAGE, "--storage", STORAGE, "--mount-path", "/m", "--name", "study", "--out", str(out)]) == 0
    assert "Indexed Job study-gpu1, study-gpu2, study-gpu4; kubectl apply --server-side" in capsys.readouterr().out
    configmap, _, *jobs = yaml.safe_load_all(out.read_text())
    assert main(["plan", str(folder), "--schedule"]) == 0
    schedule = [Path(line).name for line in capsys.readouterr().out.split()]
    assert [job["metadata"]["name"] for job in jobs] == ["study-gpu1", "study-gpu2", "study-gpu4"]
    for job, gpus in zip(jobs, (1, 2, 4)):
        pod = job["spec"]["template"]["spec"]
        wanted = [n for n in schedule if devices.get(n, 1) == gpus]
        items = next(v for v in pod["volumes"] if v["name"] == "manifests")["configMap"]
        assert items == {"name": configmap["metadata"]["name"], "items": [{"key": n, "path": f"{i}.yaml"} for i, n in enumerate(wanted)]}
        assert job["spec"]["completions"] == len(wanted)
        container = pod["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == gpus and container["resources"]["limits"]["cpu"] == str(8 * gpus)
        assert {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{gpus}Gi"}} in pod["volumes"]
        assert {"name": "shm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert sorted(configmap["data"]) == sorted(names), "one ConfigMap holds every manifest"
    header = [line for line in out.read_text().splitlines() if line.startswith("#")]
    assert any(line.startswith("# Job study-gpu2: 2 indexes, 2 GPUs per pod; requests = limits: cpu 16, memory ") for line in header) and f"#       0  {[n for n in schedule if devices.get(n) == 2][0]}" in header
    result = _kubernetes_validate(out)
    assert all(f"passed for resource job/study-gpu{n}" in result for n in (1, 2, 4))


def test_a_folder_of_two_gpu_manifests_is_one_job_named_for_its_gpus(tmp_path, capsys):
    folder = _folder_with_devices(tmp_path, {p.name: 2 for p in GRID.glob("*.yaml")})
    settings = job_settings(folder, IMAGE, STORAGE, name="pairs", mount_path="/m")
    _, _, job = yaml.safe_load_all(render(collect(folder), settings))
    assert job["metadata"]["name"] == "pairs-gpu2" and job["spec"]["completions"] == 8


def test_a_name_too_long_for_its_gpu_suffix_is_refused(tmp_path, capsys):
    folder = _folder_with_devices(tmp_path, {p.name: 8 for p in GRID.glob("*.yaml")})
    assert main(["k8s", str(folder), "--image", IMAGE, "--storage", STORAGE, "--mount-path", "/m", "--name", "n" * 50]) == 2
    assert "over 52 characters with its -gpuN suffix" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# The pod's own command, run outside Kubernetes: what the kubelet would do, done by hand.


def _kubelet_expand(value: str, env: dict[str, str]) -> str:
    """$(NAME) → env[NAME] as the kubelet substitutes container args; unknown names stay as written."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), value)


def _pod_process(job: dict, configmap: dict, index: int, root: Path, secret: dict[str, str]) -> subprocess.Popen:
    """Start one "pod": the ConfigMap's items written where the Job mounts them, the container's env
    (the Secret's keys first, its own env over them; /cache and /tmp are the pod's own emptyDirs), its args
    after substitution, given to the image's entrypoint script."""
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    items = next(v for v in pod["volumes"] if v["name"] == "manifests")["configMap"]["items"]
    mounted = Path(mounts["manifests"])
    mounted.mkdir(parents=True, exist_ok=True)
    for item in items:
        (mounted / item["path"]).write_text(configmap["data"][item["key"]])
    cache = root / f"cache-{uuid.uuid4().hex[:6]}"
    (cache / "tmp").mkdir(parents=True)
    env = {**os.environ, **secret, "JOB_COMPLETION_INDEX": str(index), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env["TMPDIR"] = str(cache / "tmp")  # tempfile's /tmp, here a folder of its own as in the pod
    for variable in (v for v in container["env"] if "value" in v):
        value = variable["value"]
        for mount, local in ((CACHE, cache), (TMP, cache / "tmp")):  # the pod's emptyDirs
            value = str(local) + value[len(mount):] if value == mount or value.startswith(mount + "/") else value
        env[variable["name"]] = value
    args = [_kubelet_expand(a, env) for a in container["args"]]
    log = (root / f"pod-{index}-{cache.name}.log").open("w")
    return subprocess.Popen([str(REPO / "docker" / "entrypoint.sh"), *args], cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)


def test_two_indexes_and_a_duplicate_pod_against_s3_each_finish_their_own_run(seaweed, tiny_manifest, tmp_path, monkeypatch):
    import seaweed as sw
    from analysis.cli import main as analysis_main
    from conftest import stage_folders

    prefix = f"k8s-{uuid.uuid4().hex[:8]}"
    storage = f"s3://{sw.BUCKET}/{prefix}"
    lora = tiny_manifest("pod-lora", method={"kind": "lora", "r": 4, "alpha": 8, "target_modules": "attention"})
    tiny_manifest("pod-zero-shot")
    folder = lora.parent
    settings = job_settings(folder, IMAGE, storage, mount_path=str(tmp_path / "mounted" / "manifests"))
    configmap, _, job = yaml.safe_load_all(render(collect(folder), settings))
    secret = {k: v for k, v in seaweed.env(tmp_path / "unused").items() if not k.startswith("QABENCH_WORKDIR")}
    sw.use(monkeypatch, seaweed.env(tmp_path / "checks"))

    # Index 0 twice at once: a pod the Job controller thinks lost, still running beside its replacement.
    pods = [_pod_process(job, configmap, index, tmp_path, secret) for index in (0, 1, 0)]
    codes = [pod.wait(timeout=900) for pod in pods]
    logs = "\n".join(f"--- {p.name}\n{p.read_text()}" for p in sorted(tmp_path.glob("pod-*.log")))
    assert codes == [0, 0, 0], logs
    assert "Traceback" not in logs

    client = seaweed.client()
    keys = {o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=sw.BUCKET, Prefix=f"{prefix}/") for o in page.get("Contents", [])}
    names = [item["key"] for item in job["spec"]["template"]["spec"]["volumes"][0]["configMap"]["items"]]
    assert names == ["pod-lora.yaml", "pod-zero-shot.yaml"]  # index 0 = lora, 1 = zero-shot
    for manifest in (lora, folder / "pod-zero-shot.yaml"):
        run = stage_folders(manifest, tmp_path / "keys-only")[0].relative_to(tmp_path / "keys-only").as_posix()
        assert f"{prefix}/{run}/_SUCCESS" in keys and f"{prefix}/{run}/metrics.json" in keys
    # A pod restarted after its run finished redoes nothing.
    again = _pod_process(job, configmap, 0, tmp_path, secret)
    assert again.wait(timeout=300) == 0
    assert "already complete" in sorted(tmp_path.glob("pod-*.log"), key=lambda p: p.stat().st_mtime)[-1].read_text()
    # Both finished runs are readable as a whole: the duplicate left no torn or extra shard behind.
    assert analysis_main(["report", storage, "--out", str(tmp_path / "report"), "--no-figures"]) == 0
    rows = (tmp_path / "report" / "results.csv").read_text().splitlines()
    assert len(rows) == 3, rows


def test_indexes_start_each_distinct_training_once_before_the_manifests_that_reuse_it(tiny_manifest, tmp_path):
    lora = {"kind": "lora", "r": 4, "alpha": 8, "target_modules": "attention"}
    tiny_manifest("a-lora-greedy", method=lora)
    tiny_manifest("b-lora-prompt-lookup", method=lora, decoding={"kind": "prompt_lookup", "batch_size": 1})
    tiny_manifest("c-ia3-greedy", method={"kind": "ia3"})
    tiny_manifest("d-none-greedy")
    folder = tmp_path / "manifests"
    settings = job_settings(folder, IMAGE, STORAGE, mount_path="/app/manifests/study")
    configmap, _, job = yaml.safe_load_all(render(collect(folder), settings))
    names = [item["key"] for item in job["spec"]["template"]["spec"]["volumes"][0]["configMap"]["items"]]
    # With --parallelism 2 the first two pods train LoRA and IA3 side by side; the prompt-lookup
    # cell, which reuses the LoRA training, comes after the manifests that need no other pod's work.
    assert names == ["a-lora-greedy.yaml", "c-ia3-greedy.yaml", "b-lora-prompt-lookup.yaml", "d-none-greedy.yaml"]


# ---------------------------------------------------------------------------------------------
# Resources, node selection, the restricted Pod Security Standard, large grids, checkov.

GiB = 1 << 30


def test_pod_needs_of_a_7b_lora_are_its_weights_per_rank_its_download_and_three_checkpoints(tmp_path):
    from runner.k8s import pod_needs
    from runner.manifest import load_manifest

    # gemma-7b: 256,000 × 3,072 tied embedding + 28 layers × (2 × 3,072 norm weights + 4 × 3,072 × 4,096
    # attention + 3 × 3,072 × 24,576 MLP) + the final 3,072 norm = 8,537,680,896 weights.
    weights = 256_000 * 3_072 + 28 * (2 * 3_072 + 4 * 3_072 * 4_096 + 3 * 3_072 * 24_576) + 3_072
    assert weights == 8_537_680_896
    # LoRA r=16 on all 7 linears: 16 × Σ(in + out) = 16 × (4 × 7,168 + 3 × 27,648) per layer, float32.
    adapter = 16 * (4 * 7_168 + 3 * 27_648) * 28 * 4
    adam = 2 * adapter + 4 * 14 * 28  # exp_avg and exp_avg_sq per weight, a float32 step per tensor (A and B of 7 linears)
    manifest = GRID / "gemma-7b-lora-0-shot-greedy.yaml"
    needs = pod_needs(load_manifest(manifest, check_files=False))
    rank = 3 * GiB + math.ceil(1.25 * weights * 2)  # PROCESS_MEMORY + LOAD_MARGIN × bfloat16 weights
    assert needs.memory == rank + adapter, "one rank, plus rank 0's host copy of the adapter while saving"
    assert needs.downloads == 2 * weights, "the hub's bfloat16 safetensors"
    assert needs.work == 3 * (adapter + adam) + 2 * adapter + 2 * GiB
    assert needs.unknown == ()
    pair = tmp_path / manifest.name
    pair.write_text(manifest.read_text() + "devices: 2\n")
    assert pod_needs(load_manifest(pair, check_files=False)).memory == 2 * rank + adapter, "every rank loads the model"


def test_pod_needs_of_a_packaged_full_fine_tune_count_the_conversion_and_the_whole_float32_model():
    from runner.k8s import pod_needs
    from runner.manifest import load_manifest

    # Gemma 3 270M: 262,144 × 640 embedding + 18 × (4 × 640 + 2 × 256 norms + 2 × 640 × 1,024 + 2 × 640 × 256
    # attention + 3 × 640 × 2,048 MLP) + 640.
    weights = 262_144 * 640 + 18 * (4 * 640 + 2 * 256 + 2 * 640 * 1_024 + 2 * 640 * 256 + 3 * 640 * 2_048) + 640
    assert weights == 268_098_176
    saved = 4 * weights  # the whole model in float32, its frozen embedding included
    trainable = weights - 262_144 * 640
    adam = 2 * 4 * trainable + 4 * (18 * (6 + 7) + 1)  # 6 norms and 7 linears per layer, the final norm
    needs = pod_needs(load_manifest(REPO / "manifests" / "examples" / "full.yaml", check_files=False))
    assert needs.memory == 3 * GiB + math.ceil(1.25 * weights * 2) + 2 * 4 * weights + saved, "two float32 copies while converting the GGUF"
    assert needs.downloads == 5 * weights, "the float32 safetensors it converts to, and the GGUF assembled under HOME"
    assert needs.work == 3 * (saved + adam) + 2 * saved + 2 * GiB


def test_an_unknown_model_shape_is_planned_as_the_largest_grid_model_with_a_note(tmp_path, capsys):
    from runner.memory_plan import KNOWN_SHAPES

    folder = tmp_path / "local"
    folder.mkdir()
    text = (GRID / "gemma-7b-none-0-shot-greedy.yaml").read_text().replace("  hub: google/gemma-7b\n", "  path: no-such-model\n")
    (folder / "local.yaml").write_text(text)
    out = _render(tmp_path, "--mount-path", "/m", folder=folder)
    err = capsys.readouterr().err
    assert "note: local.yaml: unknown: " in err and "its pod's memory and disk assume google/gemma-7b's size" in err
    assert "# note: local.yaml: unknown: " in out.read_text()
    resources = _documents(out)["Job"]["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]
    weights = sum(KNOWN_SHAPES["google/gemma-7b"].parameter_sizes())
    # A local folder downloads nothing: only DISK_BASE (+10%) on disk.
    expected_memory = -(-(3 * GiB + math.ceil(1.25 * weights * 2) + GiB) // GiB)
    assert resources == {"cpu": "8", "memory": f"{expected_memory}Gi", "ephemeral-storage": "3Gi"}


def test_each_job_requests_its_largest_manifests_needs_as_guaranteed_resources(tmp_path, capsys):
    from runner.k8s import PodNeeds, pod_resources

    settings = job_settings(GRID, IMAGE, STORAGE, mount_path="/m")
    needs = [PodNeeds(memory=10 * GiB, downloads=20 * GiB, work=3 * GiB), PodNeeds(memory=12 * GiB + 1, downloads=5 * GiB, work=10 * GiB)]
    resources = pod_resources(needs, 2, settings)
    # The larger memory plus /dev/shm (1 GiB per GPU) rounded up; the larger downloads + work, +10%.
    assert (resources.cpu, resources.memory, resources.shm) == ("16", "15Gi", "2Gi")
    assert resources.ephemeral_storage == f"{-(-math.ceil(1.1 * 23 * GiB) // GiB)}Gi" == "26Gi"
    shared = job_settings(GRID, IMAGE, STORAGE, mount_path="/m", model_cache_claim="models", cpus_per_gpu=12)
    shared_resources = pod_resources(needs, 1, shared)
    assert (shared_resources.cpu, shared_resources.ephemeral_storage) == ("12", "11Gi"), "downloads go to the claim"
    container = _documents(_render(tmp_path))["Job"]["spec"]["template"]["spec"]["containers"][0]
    requests = container["resources"]["requests"]
    assert container["resources"]["limits"] == {**requests, "nvidia.com/gpu": 1}, "requests = limits: the Guaranteed QoS class"
    assert set(requests) == {"cpu", "memory", "ephemeral-storage"}


def test_resource_flags_replace_the_derived_values_and_a_low_one_is_noted(tmp_path, capsys):
    out = _render(tmp_path, "--cpu", "7500m", "--memory", "16Gi", "--ephemeral-storage", "500G")
    err = capsys.readouterr().err
    container = _documents(out)["Job"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"] == {"cpu": "7500m", "memory": "16Gi", "ephemeral-storage": "500G"}
    assert "note: --memory 16Gi is below the 30Gi estimated for Job qabench-grid's pods" in err
    assert "--ephemeral-storage" not in err
    assert "# Job qabench-grid: 81 indexes, 1 GPU per pod; requests = limits: cpu 7500m, memory 16Gi, ephemeral-storage 500G" in out.read_text()


@pytest.mark.parametrize(
    "text, value",
    [("64Gi", 64 << 30), ("500M", 500 * 10**6), ("7500m", Decimal("7.5")), ("1.5Ti", Decimal("1.5") * (1 << 40)), ("12e9", 12 * 10**9),
     ("8", 8), ("16GB", None), ("-1", None), ("8 Gi", None), ("Gi", None), ("1.2.3", None)],
)
def test_quantity_reads_kubernetes_quantities(text, value):
    from runner.k8s import quantity

    assert quantity(text) == value


def test_bad_resource_and_node_selector_arguments_are_reported_at_once(capsys):
    args = ["k8s", str(GRID), "--image", IMAGE, "--storage", STORAGE, "--mount-path", "/m", "--cpu", "8 cores", "--memory", "512m",
            "--ephemeral-storage", "0", "--gpu-product", "NVIDIA H100 80GB HBM3", "--node-selector", "zone",
            "--node-selector", "Bad Key=x", "--node-selector", "example.com/pool=gpu/a", "--node-selector", "nvidia.com/gpu.product=A100"]
    assert main(args) == 2
    err = capsys.readouterr().err
    for text in (
        "--cpu '8 cores': not a Kubernetes quantity; write CPUs as 8 or 7500m",
        "--memory '512m': m means thousandths (of a byte); write 512Mi",
        "--ephemeral-storage '0': must be above 0",
        "GPU feature discovery writes spaces as '-', e.g. NVIDIA-H100-80GB-HBM3",
        "--node-selector 'zone': write KEY=VALUE",
        "'Bad Key' is not a label key",
        "'gpu/a' is not a label value",
        "node label 'nvidia.com/gpu.product' is selected twice",
    ):
        assert text in err, text
    assert "Traceback" not in err
    assert main(["k8s", str(GRID), "--image", IMAGE, "--storage", STORAGE, "--mount-path", "/m", "--cpu", "8", "--cpus-per-gpu", "4"]) == 2
    assert "--cpu and --cpus-per-gpu: give one" in capsys.readouterr().err


def test_gpu_product_and_node_selectors_become_one_node_selector_sorted_by_key(tmp_path, capsys):
    args = ("--node-selector", "topology.kubernetes.io/zone=eu-west-1a", "--gpu-product", "NVIDIA-H100-80GB-HBM3", "--node-selector", "pool=")
    pod = _documents(_render(tmp_path, *args))["Job"]["spec"]["template"]["spec"]
    assert list(pod["nodeSelector"].items()) == [
        ("nvidia.com/gpu.product", "NVIDIA-H100-80GB-HBM3"), ("pool", ""), ("topology.kubernetes.io/zone", "eu-west-1a"),
    ]
    assert "nodeSelector" not in _documents(_render(tmp_path))["Job"]["spec"]["template"]["spec"]


def test_every_pod_meets_the_restricted_pod_security_standard_with_a_read_only_root(tmp_path, capsys):
    """The "restricted" profile's rules and the checkov checks they answer, asserted without checkov."""
    documents = _documents(_render(tmp_path, "--model-cache-claim", "models", "--data-claim", "unifiedqa"))
    pod = documents["Job"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,  # CKV_K8S_23; docker/Dockerfile's USER
        "fsGroupChangePolicy": "OnRootMismatch", "seccompProfile": {"type": "RuntimeDefault"},  # CKV_K8S_31
    }
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,  # CKV_K8S_20
        "capabilities": {"drop": ["ALL"]},  # CKV_K8S_28, CKV_K8S_37
        "privileged": False,  # CKV_K8S_16
        "readOnlyRootFilesystem": True,  # CKV_K8S_22
    }
    assert pod["automountServiceAccountToken"] is False  # CKV_K8S_38
    assert not {"hostPID", "hostIPC", "hostNetwork"} & set(pod)  # CKV_K8S_17-19
    assert container["imagePullPolicy"] == "Always"  # CKV_K8S_15
    assert {"cpu", "memory"} <= set(container["resources"]["requests"]) & set(container["resources"]["limits"])  # CKV_K8S_10-13
    # Only volume types the profile allows; everything the runner writes has a writable mount.
    allowed = {"configMap", "emptyDir", "persistentVolumeClaim", "secret", "projected", "downwardAPI", "csi", "ephemeral"}
    assert all(set(volume) - {"name"} <= allowed for volume in pod["volumes"])
    writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    assert writable == {CACHE, TMP, "/dev/shm", "/models"}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["HOME"] == TMP and env["QABENCH_WORKDIR"].startswith(CACHE + "/")
    policy = documents["NetworkPolicy"]["spec"]
    assert policy == {"podSelector": {"matchLabels": documents["Job"]["spec"]["template"]["metadata"]["labels"]}, "policyTypes": ["Ingress"]}  # CKV2_K8S_6


def test_a_configmap_over_the_last_applied_annotation_limit_says_server_side_apply_is_required(tmp_path, capsys):
    folder = tmp_path / "large"
    folder.mkdir()
    text = (GRID / "gemma-2b-none-0-shot-greedy.yaml").read_text()
    for index in range(3):
        (folder / f"m{index}.yaml").write_text(text + ("# " + "x" * 98 + "\n") * 900)  # 3 × ~90 kB
    small = _render(tmp_path).read_text()
    capsys.readouterr()
    large = _render(tmp_path, "--mount-path", "/m", folder=folder).read_text()
    captured = capsys.readouterr()
    assert small.startswith("# Generated by `python -m runner k8s`: kubectl apply --server-side -f THIS_FILE")
    assert "--server-side is required" not in small
    required = [line for line in large.splitlines() if "--server-side is required" in line]
    assert required and "over the 262,144 of kubectl's last-applied annotation: plain `kubectl apply` fails" in required[0]
    assert "note: the ConfigMap is" in captured.err and "kubectl apply --server-side -f" in captured.out


@pytest.fixture(scope="session")
def checkov_results(tmp_path_factory) -> dict:
    """checkov's JSON over two rendered files, run once: every feature at once, and the defaults."""
    binary = checkov_command()
    if binary is None:
        pytest.skip(NO_CHECKOV)
    root = tmp_path_factory.mktemp("checkov")
    folder = _folder_with_devices(root, {p.name: n for p, n in zip(sorted(GRID.glob("gemma-*-0-shot-greedy.yaml"))[:3], (1, 2, 4))})
    everything = root / "everything.yaml"
    assert main(["k8s", str(folder), "--image", "registry.example.com/qabench@sha256:" + "0" * 64, "--storage", STORAGE, "--mount-path", "/m",
                 "--namespace", "research", "--data-claim", "unifiedqa", "--model-cache-claim", "models", "--secret", "s3",
                 "--secret-key", "HF_TOKEN=hf-token:token", "--gpu-product", "NVIDIA-H100-80GB-HBM3", "--node-selector", "pool=gpu",
                 "--out", str(everything)]) == 0
    defaults = root / "defaults.yaml"
    assert main(["k8s", str(GRID), "--image", IMAGE, "--storage", STORAGE, "--mount-path", "/m", "--out", str(defaults)]) == 0
    _kubernetes_validate(everything)
    env = {**os.environ, **CHECKOV_OFFLINE_ENV}
    command = [binary, "-f", str(everything), "-f", str(defaults), "--framework", "kubernetes", "--skip-download", "-o", "json"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.stdout.strip(), result.stderr[-3000:]
    return json.loads(result.stdout)


def test_rendered_objects_pass_checkov_with_only_justified_skips(checkov_results):
    results = checkov_results["results"]
    failed = [(c["check_id"], c["resource"], c["check_name"]) for c in results["failed_checks"]]
    assert not failed and not checkov_results["summary"]["parsing_errors"]
    checked = {".".join(c["resource"].split(".")[:3]) for c in results["passed_checks"]}
    jobs = {f"Job.research.qabench-mixed-gpu{n}" for n in (1, 2, 4)} | {"Job.default.qabench-grid"}
    assert jobs <= checked and {"Pod." + job.split(".", 1)[1] for job in jobs} <= checked, "every Job and its pod template were checked"
    skipped: dict[str, set[str]] = {}
    for check in results["skipped_checks"]:
        assert len(check["check_result"]["suppress_comment"]) > 20, check  # every skip says why
        skipped.setdefault(Path(check["file_abs_path"]).name, set()).add(f"{check['check_id']} {check['resource'].split('.')[0]}")
    # Pinned by digest, in a namespace: only the credentials-as-environment and the image's uid remain.
    assert skipped["everything.yaml"] == {f"{check} Job" for check in ("CKV_K8S_35", "CKV_K8S_40")}
    assert skipped["defaults.yaml"] == {"CKV_K8S_43 Job", "CKV_K8S_35 Job", "CKV_K8S_40 Job", "CKV_K8S_21 Job", "CKV_K8S_21 ConfigMap"}

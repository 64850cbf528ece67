"""Kubernetes: a folder of manifests as one ConfigMap plus an Indexed Job, one pod per manifest.

Index i runs the i-th manifest of the plan's schedule (runner/plan.py): the first user of each
distinct training first, then the manifests that reuse a training. Runs are idempotent and resumable, so a
retried, preempted or duplicated pod redoes nothing that is finished; the Job only has to decide
what to retry, from the runner's exit codes (2 = the manifest is wrong: fail the index at once;
anything else counts against the index's retries).
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from runner.errors import EXIT_USER_ERROR, ManifestError, Problem, UserError
from runner.grid import dump_yaml
from runner.plan import build_plan
from runner.manifest import check_manifest, manifest_files
from runner.console import error
from runner.model_spec import remote_code_warnings
from runner.storage_uri import parse_storage, redact, storage_problem

IMAGE_WORKDIR = "/app"
"""WORKDIR of the images in docker/: the checkout's files sit at the same relative paths below it."""
CACHE = "/cache"
"""Scratch volume for model downloads and the S3 store's working folder (lost with the pod)."""
CONTAINER = "runner"
CONFIGMAP_LIMIT = 1024 * 1024
"""Kubernetes rejects a ConfigMap whose keys and values exceed 1 MiB together."""
TERMINATION_GRACE_SECONDS = 300
"""Seconds between SIGTERM and SIGKILL for a pod: room to save a checkpoint or finish a shard."""
INDEX_VARIABLE = "JOB_COMPLETION_INDEX"

# DNS-1123 label. Pod host names are <job>-<index>, also a label (at most 63 characters), so the
# Job name leaves room for "-" and five index digits.
_JOB_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,50}[a-z0-9])?$")
_CONFIGMAP_KEY = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class JobSettings:
    """Everything the rendered objects depend on besides the manifests."""

    image: str
    storage: str
    name: str
    mount_path: str
    parallelism: int = 1
    retries: int = 3
    secret: str = "qabench-credentials"
    namespace: str | None = None
    data_claim: str | None = None



def _image_problem(image: str) -> str | None:
    name, _, digest = image.partition("@")
    if not name or any(c.isspace() for c in image):
        return f"--image {image!r}: not an image reference like registry/qabench:1.0"
    if digest:
        return None if _DIGEST.match(digest) else f"--image {image!r}: a digest is sha256: followed by 64 hex digits"
    last = name.rsplit("/", 1)[-1]
    tag = last.split(":", 1)[1] if ":" in last else None
    if tag is None:
        return f"--image {image!r} has no tag: pods pulling at different times could get different images; add :TAG or @sha256:DIGEST"
    if tag == "latest":
        return f"--image {image!r}: `latest` moves when a new image is pushed; use a fixed tag or @sha256:DIGEST"
    return None


def _storage_problem(uri: str) -> str | None:
    problem = storage_problem(uri, "the working folder")
    if problem is None and parse_storage(uri).scheme == "s3":
        return None
    reason = f" ({problem})" if problem else ""
    return f"--storage {redact(uri)!r}: pods on different nodes cannot share a local folder; use s3://bucket/prefix{reason}"


def job_settings(
    folder: Path,
    image: str,
    storage: str,
    name: str | None = None,
    mount_path: str | None = None,
    parallelism: int = 1,
    retries: int = 3,
    secret: str = "qabench-credentials",
    namespace: str | None = None,
    data_claim: str | None = None,
) -> JobSettings:
    """Checked settings; one UserError listing every bad argument."""
    name = name or default_name(folder)
    problems = [p for p in (_image_problem(image), _storage_problem(storage)) if p]
    if not _JOB_NAME.match(name):
        problems.append(f"--name {name!r}: lower-case letters, digits and '-', at most 52 characters (pod names add the index)")
    for flag, value in (("--secret", secret), ("--namespace", namespace), ("--data-claim", data_claim)):
        if value is not None and not re.match(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$", value):
            problems.append(f"{flag} {value!r}: not a Kubernetes object name (lower-case letters, digits, '-', '.')")
    if parallelism < 1:
        problems.append("--parallelism must be at least 1")
    if retries < 0:
        problems.append("--retries must be 0 or more")
    if mount_path is not None and not mount_path.startswith("/"):
        problems.append(f"--mount-path {mount_path!r} must be absolute")
    if problems:
        raise UserError([Problem(p) for p in problems])
    return JobSettings(
        image=image,
        storage=storage.rstrip("/"),
        name=name,
        mount_path=mount_path or default_mount_path(folder),
        parallelism=parallelism,
        retries=retries,
        secret=secret,
        namespace=namespace,
        data_claim=data_claim,
    )


def default_name(folder: Path) -> str:
    """`qabench-<folder name>` squeezed into a Job name."""
    slug = re.sub(r"[^a-z0-9]+", "-", folder.resolve().name.lower()).strip("-")
    return f"qabench-{slug}"[:52].rstrip("-")


def default_mount_path(folder: Path) -> str:
    """Where the manifests appear in the pod: the folder's place in the checkout, below the image's WORKDIR.

    A manifest's relative paths (data.root) resolve against its folder, so mounting the folder
    where the image keeps it makes them point where they point in the checkout.
    """
    try:
        relative = folder.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        raise UserError(f"{folder} is outside the current folder; run from the checkout or pass --mount-path") from None
    return posixpath.join(IMAGE_WORKDIR, relative.as_posix())


def collect(folder: Path) -> list[tuple[str, str]]:
    """(file name, text) of every manifest in `folder`, in index order; ManifestError if any is invalid.

    Only the manifests' content is checked, not the data files: those must exist in the pod.
    """
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder of manifests")
    files = manifest_files([folder])
    if not files:
        raise UserError(f"{folder}: no manifest files (*.yaml, *.yml)")
    nested = [f for f in files if f.parent != folder]
    if nested:
        # One mount point per Job: a subfolder's relative paths would resolve elsewhere in the pod.
        raise UserError(f"{folder}: manifests in subfolders ({nested[0]}); give each folder its own Job")
    problems: list[Problem] = []
    loaded = []
    for file in files:
        if not _CONFIGMAP_KEY.match(file.name):
            problems.append(Problem("file name must be letters, digits, '-', '_' or '.' to be a ConfigMap key", str(file)))
        manifest, found = check_manifest(file, check_files=False)
        problems += found
        loaded += [manifest] if manifest else []
        for warning in remote_code_warnings(manifest, str(file)) if manifest else []:
            error(warning)  # stderr: the rendered YAML may be going to stdout
    if problems:
        raise ManifestError(problems)
    # Index order = the plan's schedule: the first user of each distinct training gets the lowest
    # indexes, so with --parallelism N the first N pods start N different trainings and the
    # manifests that reuse one come after it (the training's lease keeps duplicates out anyway).
    order = build_plan(loaded, None, resolve=False).schedule()
    return [(Path(path).name, Path(path).read_text(encoding="utf-8")) for path in order]


def pod_args(settings: JobSettings) -> list[str]:
    """Arguments to the image's entrypoint in every pod; the kubelet substitutes $(JOB_COMPLETION_INDEX)."""
    return [posixpath.join(settings.mount_path, f"$({INDEX_VARIABLE}).yaml"), "--storage", settings.storage]


def _data_root(manifests: list[tuple[str, str]], mount_path: str) -> str:
    """The one data folder every manifest reads, as a path in the pod."""
    roots = {yaml.safe_load(text)["data"]["root"] for _, text in manifests}
    if len(roots) != 1:
        raise UserError(f"--data-claim mounts one data folder, but the manifests read {len(roots)}: {', '.join(sorted(roots))}")
    return posixpath.normpath(posixpath.join(mount_path, roots.pop()))


def _configmap(name: str, settings: JobSettings, labels: dict[str, str], data: dict[str, str]) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "labels": labels}
    if settings.namespace:
        metadata["namespace"] = settings.namespace
    # Immutable and named after its content: a changed folder becomes a new ConfigMap, never new
    # files under a Job whose indexes were numbered for the old ones.
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "immutable": True, "data": data}


def _container(settings: JobSettings, mounts: list[dict[str, Any]]) -> dict[str, Any]:
    env = [
        # Declared so the kubelet can substitute it in args; the Job controller keeps a declared one.
        {"name": INDEX_VARIABLE, "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
        {"name": "HF_HOME", "value": f"{CACHE}/huggingface"},
        {"name": "QABENCH_MODEL_CACHE", "value": f"{CACHE}/qabench"},
        {"name": "QABENCH_WORKDIR", "value": f"{CACHE}/work"},
    ]
    return {
        "name": CONTAINER,
        "image": settings.image,
        "imagePullPolicy": "IfNotPresent",
        "args": pod_args(settings),
        "env": env,
        # AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, HF_TOKEN, ...: every key of the Secret.
        "envFrom": [{"secretRef": {"name": settings.secret}}],
        "resources": {"limits": {"nvidia.com/gpu": 1}},
        "securityContext": {"allowPrivilegeEscalation": False},
        "volumeMounts": mounts,
    }


def _job(settings: JobSettings, labels: dict[str, str], configmap: str, manifests: list[tuple[str, str]]) -> dict[str, Any]:
    items = [{"key": key, "path": f"{index}.yaml"} for index, (key, _) in enumerate(manifests)]
    volumes: list[dict[str, Any]] = [
        {"name": "manifests", "configMap": {"name": configmap, "items": items}},
        {"name": "cache", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "manifests", "mountPath": settings.mount_path, "readOnly": True},
        {"name": "cache", "mountPath": CACHE},
    ]
    if settings.data_claim:
        volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": settings.data_claim, "readOnly": True}})
        mounts.append({"name": "data", "mountPath": _data_root(manifests, settings.mount_path), "readOnly": True})
    metadata: dict[str, Any] = {"name": settings.name, "labels": labels}
    if settings.namespace:
        metadata["namespace"] = settings.namespace
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "completionMode": "Indexed",
            "completions": len(manifests),
            "parallelism": settings.parallelism,
            # Each index is retried on its own, so one flaky manifest does not use up the others' retries.
            "backoffLimitPerIndex": settings.retries,
            "podFailurePolicy": {
                "rules": [
                    # Preemption, eviction, node drain: not the run's fault and not counted; the
                    # replacement pod resumes from the last checkpoint or shard.
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                    # A wrong manifest stays wrong: fail the index without retrying.
                    {"action": "FailIndex", "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EXIT_USER_ERROR]}},
                ]
            },
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",  # required by podFailurePolicy; retries are new pods
                    # On SIGTERM the runner finishes its training step or shard and saves it;
                    # a generous grace period lets that land before the kubelet's SIGKILL.
                    "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
                    "securityContext": {"runAsNonRoot": True},  # the images run as uid 1000
                    "containers": [_container(settings, mounts)],
                    "volumes": volumes,
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                },
            },
        },
    }


def render(manifests: list[tuple[str, str]], settings: JobSettings) -> str:
    """The ConfigMap and the Job as one multi-document YAML text (same input, same bytes)."""
    data = dict(manifests)
    size = sum(len(key.encode()) + len(text.encode()) for key, text in manifests)
    if size > CONFIGMAP_LIMIT:
        raise UserError(
            f"{len(manifests)} manifests take {size:,} bytes, over a ConfigMap's {CONFIGMAP_LIMIT:,}: split the folder into several Jobs"
        )
    digest = hashlib.sha256(dump_yaml(data).encode()).hexdigest()[:10]
    configmap = f"{settings.name}-{digest}"
    labels = {"app.kubernetes.io/name": "qabench", "app.kubernetes.io/instance": settings.name}
    header = [
        "# Generated by `python -m runner k8s`: kubectl apply -f THIS_FILE",
        f"# Job {settings.name}: {len(manifests)} indexes, image {settings.image}, storage {settings.storage}",
        "# index  manifest",
    ] + [f"# {index:5d}  {key}" for index, (key, _) in enumerate(manifests)]
    documents = [_configmap(configmap, settings, labels, data), _job(settings, labels, configmap, manifests)]
    return "\n".join(header) + "\n" + "---\n".join(dump_yaml(document) for document in documents)

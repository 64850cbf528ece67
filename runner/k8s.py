"""Kubernetes: a folder of manifests as one ConfigMap plus Indexed Jobs, one pod per manifest.

An Indexed Job has one pod template, so one GPU count: the manifests are split by their `devices`
into one Job each (`<name>` when every manifest uses one GPU, else `<name>-gpu<N>`), every Job
numbering its own indexes. Index i of a Job runs its i-th manifest in the plan's schedule
(runner/plan.py): the first user of each distinct training first, then the manifests that reuse a
training. Runs are idempotent and resumable, so a retried, preempted or duplicated pod redoes
nothing that is finished; a Job only has to decide what to retry, from the runner's exit codes
(2 = the manifest is wrong: fail the index at once; anything else counts against the index's retries).

Credentials reach the pods only from named Secrets (`envFrom`, or one key as one variable); the
rendered text never holds a credential's value, and a storage URI carrying one is refused.
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
MODEL_CACHE = "/models"
"""Where --model-cache-claim mounts the shared model cache (HF_HOME and QABENCH_MODEL_CACHE below it)."""
DEFAULT_SECRET = "qabench-credentials"
"""The Secret given to `envFrom` when neither --secret nor --secret-key names one."""
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
_OBJECT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_SECRET_KEY = re.compile(r"^(?P<variable>[A-Za-z_][A-Za-z0-9_]*)=(?P<secret>[^:]+):(?P<key>[-._a-zA-Z0-9]{1,253})$")
# Set by the Job itself (_container): a Secret key may not replace them.
_RESERVED = frozenset({INDEX_VARIABLE, "HF_HOME", "QABENCH_MODEL_CACHE", "QABENCH_WORKDIR"})


@dataclass(frozen=True)
class JobSettings:
    """Everything the rendered objects depend on besides the manifests."""

    image: str
    storage: str
    name: str
    mount_path: str
    parallelism: int = 1
    """Pods at once, per Job."""
    retries: int = 3
    secrets: tuple[str, ...] = (DEFAULT_SECRET,)
    """Secrets whose every key becomes an environment variable (`envFrom`), later ones winning."""
    secret_keys: tuple[tuple[str, str, str], ...] = ()
    """(variable, Secret, key): one key of a Secret as one variable (`valueFrom.secretKeyRef`)."""
    namespace: str | None = None
    data_claim: str | None = None
    model_cache_claim: str | None = None
    """A ReadWriteMany PersistentVolumeClaim shared by every pod for model downloads."""


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


def _shown(uri: str) -> str:
    """`uri` fit for a message: user and password as ***, and the query (it may hold a signature) left out."""
    text = redact(uri)
    return text.split("?", 1)[0] + "?…" if "?" in text else text


def _storage_problem(uri: str) -> str | None:
    problem = storage_problem(uri, "the working folder")
    if problem is None and parse_storage(uri).scheme == "s3":
        return None
    if problem and ("credentials" in problem or "?" in uri):
        # Everything in the Job is readable by whoever can read the Job; credentials come from Secrets.
        return f"--storage {_shown(uri)!r}: {problem}; pods read them from the Secret (--secret, --secret-key)"
    if problem and uri.lower().startswith("s3:"):
        return f"--storage {_shown(uri)!r}: {problem}"
    reason = f" ({problem})" if problem else ""
    return f"--storage {_shown(uri)!r}: pods on different nodes cannot share a local folder; use s3://bucket/prefix{reason}"


def _secret_key(text: str) -> tuple[tuple[str, str, str] | None, str | None]:
    """(variable, Secret, key) from `VARIABLE=SECRET:KEY`, or (None, why not)."""
    match = _SECRET_KEY.match(text)
    if match is None:
        return None, f"--secret-key {text!r}: write VARIABLE=SECRET:KEY, e.g. HF_TOKEN=hf-token:token"
    variable, secret, key = match.group("variable", "secret", "key")
    if variable in _RESERVED:
        return None, f"--secret-key {text!r}: {variable} is set by the Job itself"
    if not _OBJECT_NAME.match(secret):
        return None, f"--secret-key {text!r}: {secret!r} is not a Kubernetes object name (lower-case letters, digits, '-', '.')"
    return (variable, secret, key), None


def job_settings(
    folder: Path,
    image: str,
    storage: str,
    name: str | None = None,
    mount_path: str | None = None,
    parallelism: int = 1,
    retries: int = 3,
    secrets: list[str] | None = None,
    secret_keys: list[str] | None = None,
    namespace: str | None = None,
    data_claim: str | None = None,
    model_cache_claim: str | None = None,
) -> JobSettings:
    """Checked settings; one UserError listing every bad argument.

    `secrets`: Secret names for `envFrom` (default qabench-credentials, unless `secret_keys` name
    the Secrets instead); `secret_keys`: `VARIABLE=SECRET:KEY` texts.
    """
    name = name or default_name(folder)
    problems = [p for p in (_image_problem(image), _storage_problem(storage)) if p]
    if not _JOB_NAME.match(name):
        problems.append(f"--name {name!r}: lower-case letters, digits and '-', at most 52 characters (pod names add the index)")
    secrets = list(secrets or ([] if secret_keys else [DEFAULT_SECRET]))
    named = [("--secret", secret) for secret in secrets]
    named += [("--namespace", namespace), ("--data-claim", data_claim), ("--model-cache-claim", model_cache_claim)]
    for flag, value in named:
        if value is not None and not _OBJECT_NAME.match(value):
            problems.append(f"{flag} {value!r}: not a Kubernetes object name (lower-case letters, digits, '-', '.')")
    keys = []
    for text in secret_keys or []:
        parsed, problem = _secret_key(text)
        keys += [parsed] if parsed else []
        problems += [problem] if problem else []
    variables = [variable for variable, _, _ in keys]
    problems += [f"--secret-key {v}=...: given twice" for v in sorted({v for v in variables if variables.count(v) > 1})]
    if len(set(secrets)) < len(secrets):
        problems.append("--secret: a Secret is named twice")
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
        secrets=tuple(secrets),
        secret_keys=tuple(keys),
        namespace=namespace,
        data_claim=data_claim,
        model_cache_claim=model_cache_claim,
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


@dataclass(frozen=True)
class PodManifest:
    """One manifest as a pod runs it."""

    key: str
    """Its file name: the ConfigMap key."""
    text: str
    devices: int
    """GPUs its pod requests (the manifest's `devices`: data-parallel processes under torchrun)."""


def collect(folder: Path) -> list[PodManifest]:
    """Every manifest in `folder`, in the plan's schedule order; ManifestError if any is invalid.

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
    devices = {str(item.path): item.manifest.devices for item in loaded}
    order = build_plan(loaded, None, resolve=False).schedule()
    return [PodManifest(Path(path).name, Path(path).read_text(encoding="utf-8"), devices[path]) for path in order]


def pod_args(settings: JobSettings) -> list[str]:
    """Arguments to the image's entrypoint in every pod; the kubelet substitutes $(JOB_COMPLETION_INDEX)."""
    return [posixpath.join(settings.mount_path, f"$({INDEX_VARIABLE}).yaml"), "--storage", settings.storage]


def _data_root(manifests: list[PodManifest], mount_path: str) -> str:
    """The one data folder every manifest reads, as a path in the pod."""
    roots = {yaml.safe_load(m.text)["data"]["root"] for m in manifests}
    if len(roots) != 1:
        raise UserError(f"--data-claim mounts one data folder, but the manifests read {len(roots)}: {', '.join(sorted(roots))}")
    return posixpath.normpath(posixpath.join(mount_path, roots.pop()))


def _metadata(name: str, settings: JobSettings, labels: dict[str, str]) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "labels": labels}
    if settings.namespace:
        metadata["namespace"] = settings.namespace
    return metadata


def _configmap(name: str, settings: JobSettings, labels: dict[str, str], data: dict[str, str]) -> dict[str, Any]:
    # Immutable and named after its content: a changed folder becomes a new ConfigMap, never new
    # files under a Job whose indexes were numbered for the old ones.
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _metadata(name, settings, labels), "immutable": True, "data": data}


def _container(settings: JobSettings, mounts: list[dict[str, Any]], devices: int) -> dict[str, Any]:
    models = MODEL_CACHE if settings.model_cache_claim else CACHE
    env: list[dict[str, Any]] = [
        # Declared so the kubelet can substitute it in args; the Job controller keeps a declared one.
        {"name": INDEX_VARIABLE, "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
        {"name": "HF_HOME", "value": f"{models}/huggingface"},
        {"name": "QABENCH_MODEL_CACHE", "value": f"{models}/qabench"},
        # Per pod even with a shared model cache: the S3 store stages its uploads here.
        {"name": "QABENCH_WORKDIR", "value": f"{CACHE}/work"},
    ]
    # Only references: the kubelet reads the values from the Secret when it starts the pod.
    env += [{"name": variable, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}} for variable, secret, key in settings.secret_keys]
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": settings.image,
        "imagePullPolicy": "IfNotPresent",
        "args": pod_args(settings),
        "env": env,
    }
    if settings.secrets:
        # AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, HF_TOKEN, ...: every key of each Secret.
        container["envFrom"] = [{"secretRef": {"name": secret}} for secret in settings.secrets]
    return container | {
        # `devices: N` runs N data-parallel processes under torchrun, one per GPU, in this one pod.
        "resources": {"limits": {"nvidia.com/gpu": devices}},
        "securityContext": {"allowPrivilegeEscalation": False},
        "volumeMounts": mounts,
    }


def job_names(manifests: list[PodManifest], settings: JobSettings) -> dict[int, str]:
    """GPUs per pod → its Job's name, fewest first: `<name>` when every manifest uses one GPU, else `<name>-gpu<N>`."""
    counts = sorted({m.devices for m in manifests})
    names = {n: settings.name if counts == [1] else f"{settings.name}-gpu{n}" for n in counts}
    too_long = [name for name in names.values() if not _JOB_NAME.match(name)]
    if too_long:
        raise UserError(f"Job name {too_long[0]!r} is over 52 characters with its -gpuN suffix; pass a shorter --name")
    return names


def _job(name: str, settings: JobSettings, labels: dict[str, str], configmap: str, manifests: list[PodManifest], devices: int) -> dict[str, Any]:
    items = [{"key": m.key, "path": f"{index}.yaml"} for index, m in enumerate(manifests)]
    volumes: list[dict[str, Any]] = [
        {"name": "manifests", "configMap": {"name": configmap, "items": items}},
        {"name": "cache", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "manifests", "mountPath": settings.mount_path, "readOnly": True},
        {"name": "cache", "mountPath": CACHE},
    ]
    if settings.model_cache_claim:
        # Every pod reads and fills the same cache, so a model is downloaded once per cluster, not
        # per pod. Concurrent downloads of one model are safe: huggingface_hub locks each file
        # (<cache>/.locks) and renames it into place whole; packaged models are converted in a
        # staging folder and renamed likewise.
        volumes.append({"name": "models", "persistentVolumeClaim": {"claimName": settings.model_cache_claim}})
        mounts.append({"name": "models", "mountPath": MODEL_CACHE})
    if settings.data_claim:
        volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": settings.data_claim, "readOnly": True}})
        mounts.append({"name": "data", "mountPath": _data_root(manifests, settings.mount_path), "readOnly": True})
    if devices > 1:
        # NCCL between the torchrun workers goes through /dev/shm, which a container gets as 64 MiB.
        volumes.append({"name": "shm", "emptyDir": {"medium": "Memory"}})
        mounts.append({"name": "shm", "mountPath": "/dev/shm"})
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(name, settings, labels),
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
                    "containers": [_container(settings, mounts, devices)],
                    "volumes": volumes,
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                },
            },
        },
    }


def render(manifests: list[PodManifest], settings: JobSettings) -> str:
    """The ConfigMap and one Indexed Job per GPU count as one multi-document YAML text (same input, same bytes)."""
    data = {m.key: m.text for m in manifests}
    size = sum(len(m.key.encode()) + len(m.text.encode()) for m in manifests)
    if size > CONFIGMAP_LIMIT:
        raise UserError(
            f"{len(manifests)} manifests take {size:,} bytes, over a ConfigMap's {CONFIGMAP_LIMIT:,}: split the folder into several Jobs"
        )
    digest = hashlib.sha256(dump_yaml(data).encode()).hexdigest()[:10]
    configmap = f"{settings.name}-{digest}"
    labels = {"app.kubernetes.io/name": "qabench", "app.kubernetes.io/instance": settings.name}
    # One Job per GPU count, fewest GPUs first; within each, the plan's schedule order.
    names = job_names(manifests, settings)
    groups = {n: [m for m in manifests if m.devices == n] for n in names}
    header = [
        "# Generated by `python -m runner k8s`: kubectl apply -f THIS_FILE",
        f"# ConfigMap {configmap}; image {settings.image}; storage {settings.storage}",
    ]
    for n, group in groups.items():
        header += [
            f"# Job {names[n]}: {len(group)} index{'es' if len(group) > 1 else ''}, {n} GPU{'s' if n > 1 else ''} per pod",
            "#   index  manifest",
        ] + [f"#   {index:5d}  {m.key}" for index, m in enumerate(group)]
    documents = [_configmap(configmap, settings, labels, data)]
    documents += [_job(names[n], settings, labels, configmap, group, n) for n, group in groups.items()]
    return "\n".join(header) + "\n" + "---\n".join(dump_yaml(document) for document in documents)

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

Each Job's pods request (and are limited to) CPU, memory and ephemeral storage derived from its
manifests (`pod_needs`, `pod_resources`: model sizes from runner/memory_plan.py's shapes), run under
the "restricted" Pod Security Standard with a read-only root filesystem, and accept no connections
(a NetworkPolicy). The output is checked with kubernetes-validate and checkov (tests/test_k8s.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import posixpath
import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from runner.errors import EXIT_USER_ERROR, ManifestError, Problem, UserError
from runner.grid import dump_yaml
from runner.plan import build_plan
from runner.preemption import GRACE_SECONDS
from runner.manifest import LoadedManifest, check_manifest, load_manifest, manifest_files
from runner.console import error
from runner.memory_plan import GiB, KNOWN_SHAPES, Adaptation, ModelShape, adaptation_of, dtype_bytes, model_shape, optimizer_bytes
from runner.model_spec import ModelSpec, remote_code_warnings
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
INDEX_VARIABLE = "JOB_COMPLETION_INDEX"
TMP = "/tmp"
"""A per-pod emptyDir: the root filesystem is read-only, and tempfile, torchrun and HOME (below) write here."""
ANNOTATION_LIMIT = 256 * 1024
"""Kubernetes rejects an object whose annotations exceed 256 KiB together; plain `kubectl apply`
stores the whole object as JSON in its last-applied-configuration annotation."""
RUN_AS = 1000
"""The images' user and group (docker/Dockerfile: `useradd --uid 1000`, `chown 1000:1000 /app`)."""
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
"""The node label NVIDIA's GPU feature discovery sets to the card's model, e.g. NVIDIA-H100-80GB-HBM3."""

# Resources, estimated on the generous side: a pod over its memory limit is OOM-killed and one over
# its ephemeral storage evicted, while asking too much only keeps it off nodes that cannot hold it.
# --cpu, --cpus-per-gpu, --memory and --ephemeral-storage replace the derived values.
CPUS_PER_GPU = 8
"""CPUs per GPU: tokenization, the collator and the torch/NCCL host threads of one rank. GPU nodes
offer 12 or more per GPU (8 × A100/H100 nodes: 96-208 vCPUs), so 8 leaves room for the node's own
reservations while a node still takes one pod per GPU."""
PROCESS_MEMORY = 3 * GiB
"""Host memory of one rank before any weight: CUDA's host-side libraries and context, torch,
transformers, the tokenizer and the datasets hold about 2-3 GiB resident."""
LOAD_MARGIN = 1.25
"""transformers materializes the weights in host memory before moving them to the GPU; the
safetensors files are mmap'd, and their page cache (charged to the pod, reclaimable) sits beside
the tensors while loading: a quarter more than the weights."""
HUB_WEIGHT_BYTES = 2
"""Bytes per weight of a hub checkpoint: published in bfloat16/float16 (gemma-2b: 5.0 GB for 2.51B
weights, Llama-2-7b-hf: 13.5 GB for 6.74B); only the safetensors files are downloaded."""
CONVERTED_WEIGHT_BYTES = 4 + 1
"""Bytes per weight a packaged model writes: the float32 safetensors convert_gguf saves, plus the
GGUF that gemma3-270m's package assembles under HOME (at most 1 byte per weight: Q4 is ~0.6)."""
CONVERSION_COPIES = 2
"""float32 copies of a packaged model in host memory while convert_gguf runs (the GGUF-loaded
model and the fresh one it is copied into)."""
CHECKPOINTS_ON_DISK = 3
"""Training checkpoints in the S3 working folder at once: save_total_limit=2 (runner/train.py)
plus the one being written before the oldest is rotated out."""
DISK_BASE = 2 * GiB
"""Disk besides models and checkpoints: predictions, logs, TensorBoard events, tokenizer files, and
the kernels torch and triton cache under HOME."""
DISK_MARGIN = 1.10
"""Checkpoints also hold scheduler, RNG and trainer state, hub downloads also tokenizer and config
files: a tenth more than the bytes counted."""
SHM_PER_GPU = 1 * GiB
"""/dev/shm per GPU (a container gets 64 MiB): NCCL's shared-memory transport, used where GPUs
cannot reach each other directly, takes 4 MiB buffers × up to 32 channels per peer, 7 peers × 128
MiB = 896 MiB per rank on 8 GPUs; it is memory and counts toward the pod's memory limit."""
FALLBACK_MODEL = "google/gemma-7b"
"""The shape assumed when a model's is unknown: the largest model the shipped grids name (8.54B
weights). A larger model needs --memory and --ephemeral-storage."""

# DNS-1123 label. Pod host names are <job>-<index>, also a label (at most 63 characters), so the
# Job name leaves room for "-" and five index digits.
_JOB_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,50}[a-z0-9])?$")
_CONFIGMAP_KEY = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_OBJECT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_SECRET_KEY = re.compile(r"^(?P<variable>[A-Za-z_][A-Za-z0-9_]*)=(?P<secret>[^:]+):(?P<key>[-._a-zA-Z0-9]{1,253})$")
# Set by the Job itself (_container): a Secret key may not replace them.
_RESERVED = frozenset({INDEX_VARIABLE, "HF_HOME", "QABENCH_MODEL_CACHE", "QABENCH_WORKDIR", "HOME"})
# Kubernetes quantities (resource.Quantity): a non-negative decimal number and a suffix.
_QUANTITY = re.compile(r"^(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E|[eE][-+]?[0-9]+)?$")
_SUFFIXES = {"": 1, "m": Decimal("0.001"), **{s: 1000**i for i, s in enumerate("kMGTPE", 1)}, **{s + "i": 1024**i for i, s in enumerate("KMGTPE", 1)}}
# Label keys: an optional DNS-subdomain prefix and '/', then a name; values: a name or empty.
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


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
    cpus_per_gpu: int = CPUS_PER_GPU
    cpu: str | None = None
    """CPU quantity per pod for every Job (None: `cpus_per_gpu` × the pod's GPUs)."""
    memory: str | None = None
    """Memory quantity per pod for every Job (None: derived from the manifests, see `pod_needs`)."""
    ephemeral_storage: str | None = None
    """Ephemeral-storage quantity per pod for every Job (None: derived from the manifests)."""
    node_selector: tuple[tuple[str, str], ...] = ()
    """(label key, value) every node running a pod must carry, sorted by key (--gpu-product included)."""


def quantity(text: str) -> Decimal | None:
    """The value of a Kubernetes quantity (`64Gi` → 68719476736, `500m` → 0.5), or None if `text` is not one."""
    match = _QUANTITY.match(text)
    if match is None:
        return None
    suffix = match.group("suffix") or ""
    scale = Decimal(10) ** int(suffix[1:]) if suffix[:1] in ("e", "E") else Decimal(_SUFFIXES[suffix])
    return Decimal(match.group("number")) * scale


def _quantity_problem(flag: str, text: str, unit: str) -> str | None:
    value = quantity(text)
    if value is None:
        if unit == "cpu":
            return f"{flag} {text!r}: not a Kubernetes quantity; write CPUs as 8 or 7500m"
        return f"{flag} {text!r}: not a Kubernetes quantity; write e.g. 64Gi (Ki, Mi, Gi, Ti: powers of 1024) or 64G (k, M, G, T: powers of 1000)"
    if unit == "bytes" and text.endswith("m"):
        # A classic slip: `m` is milli, so 512m is half a byte.
        return f"{flag} {text!r}: m means thousandths (of a byte); write {text[:-1]}Mi"
    if value <= 0:
        return f"{flag} {text!r}: must be above 0"
    return None


def _label_key_problem(key: str) -> str | None:
    prefix, _, name = key.rpartition("/")
    if "/" in key and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return f"{key!r} is not a label key: its prefix before '/' must be a DNS subdomain like example.com"
    if not _LABEL_NAME.match(name):
        return f"{key!r} is not a label key: [prefix/]name, the name at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
    return None


def _label_value_problem(value: str) -> str | None:
    if value == "" or _LABEL_NAME.match(value):
        return None
    hint = " (GPU feature discovery writes spaces as '-', e.g. NVIDIA-H100-80GB-HBM3)" if " " in value else ""
    return f"{value!r} is not a label value: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit{hint}"


def _node_selector(gpu_product: str | None, selectors: list[str]) -> tuple[tuple[tuple[str, str], ...], list[str]]:
    """The checked (key, value) pairs of --gpu-product and each --node-selector KEY=VALUE, sorted by key, and the problems."""
    pairs, problems = [], []
    if gpu_product is not None:
        problem = _label_value_problem(gpu_product)
        problems += [f"--gpu-product {gpu_product!r}: {problem}; see `kubectl get nodes -L {GPU_PRODUCT_LABEL}`"] if problem else []
        pairs.append((GPU_PRODUCT_LABEL, gpu_product))
    for text in selectors:
        key, equals, value = text.partition("=")
        if not equals:
            problems.append(f"--node-selector {text!r}: write KEY=VALUE, e.g. cloud.google.com/gke-accelerator=nvidia-h100-80gb")
            continue
        found = [p for p in (_label_key_problem(key), _label_value_problem(value)) if p]
        problems += [f"--node-selector {text!r}: {p}" for p in found]
        pairs.append((key, value))
    keys = [key for key, _ in pairs]
    for key in sorted({k for k in keys if keys.count(k) > 1}):
        hint = " (--gpu-product sets it)" if key == GPU_PRODUCT_LABEL and gpu_product is not None else ""
        problems.append(f"node label {key!r} is selected twice{hint}")
    return tuple(sorted(pairs)), problems


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
    cpus_per_gpu: int | None = None,
    cpu: str | None = None,
    memory: str | None = None,
    ephemeral_storage: str | None = None,
    gpu_product: str | None = None,
    node_selectors: list[str] | None = None,
) -> JobSettings:
    """Checked settings; one UserError listing every bad argument.

    `secrets`: Secret names for `envFrom` (default qabench-credentials, unless `secret_keys` name
    the Secrets instead); `secret_keys`: `VARIABLE=SECRET:KEY` texts; `cpu`, `memory`,
    `ephemeral_storage`: Kubernetes quantities per pod; `node_selectors`: `KEY=VALUE` texts.
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
    for flag, value, unit in (("--cpu", cpu, "cpu"), ("--memory", memory, "bytes"), ("--ephemeral-storage", ephemeral_storage, "bytes")):
        problem = _quantity_problem(flag, value, unit) if value is not None else None
        problems += [problem] if problem else []
    if cpus_per_gpu is not None and cpus_per_gpu < 1:
        problems.append("--cpus-per-gpu must be at least 1")
    if cpu is not None and cpus_per_gpu is not None:
        problems.append("--cpu and --cpus-per-gpu: give one (--cpu sets every pod's CPUs whatever its GPUs)")
    node_selector, found = _node_selector(gpu_product, node_selectors or [])
    problems += found
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
        cpus_per_gpu=cpus_per_gpu or CPUS_PER_GPU,
        cpu=cpu,
        memory=memory,
        ephemeral_storage=ephemeral_storage,
        node_selector=node_selector,
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
class PodNeeds:
    """What one manifest's pod needs from its node besides GPUs, in bytes."""

    memory: int
    """Host memory at the peak: every rank loading its model (and draft), plus the trained model's
    copy while rank 0 saves it; /dev/shm is added per Job (`pod_resources`)."""
    downloads: int
    """Model files the pod writes to its model cache: its own disk unless --model-cache-claim."""
    work: int
    """Everything else it writes to disk: checkpoints, the trained output staged and kept in the S3
    working folder, predictions and logs."""
    unknown: tuple[str, ...] = ()
    """Why a model's shape is unknown (FALLBACK_MODEL's was assumed instead)."""


@dataclass(frozen=True)
class PodManifest:
    """One manifest as a pod runs it."""

    key: str
    """Its file name: the ConfigMap key."""
    text: str
    devices: int
    """GPUs its pod requests (the manifest's `devices`: data-parallel processes under torchrun)."""
    needs: PodNeeds


def _shape(spec: ModelSpec, base_dir: Path) -> tuple[ModelShape, str | None]:
    """The model's shape from runner/memory_plan.py (a config, the local hub cache or its table), or FALLBACK_MODEL's and why."""
    shape = model_shape(spec, base_dir)
    return (KNOWN_SHAPES[FALLBACK_MODEL], shape) if isinstance(shape, str) else (shape, None)


def _model_needs(spec: ModelSpec, shape: ModelShape) -> tuple[int, int]:
    """(host memory of one rank loading it, bytes it downloads or converts into the model cache)."""
    weights = sum(shape.parameter_sizes())
    memory = math.ceil(LOAD_MARGIN * weights * dtype_bytes(spec.dtype))
    if spec.package is not None:
        # The conversion's copies are freed before loading; counted on top anyway (packaged models are small).
        return memory + CONVERSION_COPIES * 4 * weights, CONVERTED_WEIGHT_BYTES * weights
    # A local folder (`path`) is read where it is, in the image or on a claim.
    return memory, HUB_WEIGHT_BYTES * weights if spec.hub is not None else 0


def _trained_needs(loaded: LoadedManifest, shape: ModelShape) -> tuple[int, int]:
    """(bytes of the trained adapter or model, bytes of one training checkpoint); (0, 0) when the method trains nothing."""
    from runner.methods import METHODS

    manifest = loaded.manifest
    if not METHODS.get(manifest.method.kind).trains:
        return 0, 0
    # A method without a memory formula is planned as full fine-tuning: every weight, in float32.
    adaptation = adaptation_of(manifest.method, shape, dtype_bytes(manifest.model.dtype)) or Adaptation(tuple(shape.parameter_sizes()), 4, full=True)
    # Full fine-tuning saves the whole model, a frozen embedding included; adapters save what trains.
    trained = (sum(shape.parameter_sizes()) if adaptation.full else adaptation.params) * adaptation.param_bytes
    return trained, trained + optimizer_bytes(adaptation.sizes, adaptation.param_bytes, manifest.train.optimizer)


def _draft(loaded: LoadedManifest) -> tuple[ModelSpec, LoadedManifest | None, Path] | str | None:
    """The speculative draft's model block, the manifest whose training it is (if any) and its base folder; a reason if unreadable."""
    from runner.decoding import DECODINGS

    spec = DECODINGS.get(loaded.manifest.decoding.kind).draft(loaded.manifest.decoding)
    if spec is None:
        return None
    if spec.manifest is None:
        return spec, None, loaded.base_dir
    try:
        owner = load_manifest(loaded.resolve(spec.manifest), check_files=False)
    except (UserError, OSError) as exc:
        return f"unknown: draft manifest {spec.manifest} not readable ({type(exc).__name__})"
    return owner.manifest.model, owner, owner.base_dir


def pod_needs(loaded: LoadedManifest) -> PodNeeds:
    """Host memory and disk one manifest's pod needs, from its model's shape (see the constants above).

    Memory: each of the `devices` ranks loads the model (and a speculative draft) through host
    memory, PROCESS_MEMORY + LOAD_MARGIN × weights; rank 0 then holds a host copy of the trained
    output while saving it. Disk: the hub or converted model files, CHECKPOINTS_ON_DISK
    checkpoints (trained weights + optimizer state), the trained output twice (staged in /tmp, then
    kept in the S3 working folder) and a draft's trained output, plus DISK_BASE.
    """
    manifest = loaded.manifest
    shape, unknown = _shape(manifest.model, loaded.base_dir)
    unknowns = [unknown] if unknown else []
    rank_memory, downloads = _model_needs(manifest.model, shape)
    trained, checkpoint = _trained_needs(loaded, shape)
    work = CHECKPOINTS_ON_DISK * checkpoint + 2 * trained
    draft = _draft(loaded)
    if isinstance(draft, str):
        unknowns.append(draft + " (the speculative draft)")
        draft = (manifest.model, None, loaded.base_dir)  # as big as the model itself
    if draft is not None:
        spec, owner, base_dir = draft
        draft_shape, draft_unknown = _shape(spec, base_dir)
        unknowns += [f"{draft_unknown} (the speculative draft)"] if draft_unknown else []
        draft_memory, draft_downloads = _model_needs(spec, draft_shape)
        rank_memory, downloads = rank_memory + draft_memory, downloads + draft_downloads
        work += _trained_needs(owner, draft_shape)[0] if owner is not None else 0  # its trained output, fetched from storage
    memory = manifest.devices * (PROCESS_MEMORY + rank_memory) + trained
    return PodNeeds(memory=memory, downloads=downloads, work=work + DISK_BASE, unknown=tuple(unknowns))


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
    by_path = {str(item.path): item for item in loaded}
    order = build_plan(loaded, None, resolve=False).schedule()
    return [PodManifest(Path(path).name, Path(path).read_text(encoding="utf-8"), by_path[path].manifest.devices, pod_needs(by_path[path])) for path in order]


@dataclass(frozen=True)
class PodResources:
    """One Job's per-pod requests (= limits) as Kubernetes quantities, and the estimates they come from."""

    cpu: str
    memory: str
    ephemeral_storage: str
    shm: str
    """sizeLimit of the memory-backed /dev/shm (inside `memory`)."""
    estimated_memory: int
    """Bytes derived from the manifests, whatever --memory says."""
    estimated_storage: int


def _gib(value: int) -> str:
    """Bytes as whole GiB, rounded up: `25Gi`."""
    return f"{-(-value // GiB)}Gi"


def pod_resources(needs: list[PodNeeds], devices: int, settings: JobSettings) -> PodResources:
    """The requests of a Job's pods: the largest need over its manifests (one pod template per Job), unless overridden."""
    shm = SHM_PER_GPU * devices
    memory = max(n.memory for n in needs) + shm  # a memory-backed emptyDir is charged to the pod's memory
    # Without a shared claim the model files land on the pod's own disk (the /cache emptyDir).
    storage = math.ceil(DISK_MARGIN * max(n.work + (0 if settings.model_cache_claim else n.downloads) for n in needs))
    return PodResources(
        cpu=settings.cpu or str(settings.cpus_per_gpu * devices),
        memory=settings.memory or _gib(memory),
        ephemeral_storage=settings.ephemeral_storage or _gib(storage),
        shm=_gib(shm),
        estimated_memory=memory,
        estimated_storage=storage,
    )


def pod_args(settings: JobSettings) -> list[str]:
    """Arguments to the image's entrypoint in every pod; the kubelet substitutes $(JOB_COMPLETION_INDEX)."""
    return [posixpath.join(settings.mount_path, f"$({INDEX_VARIABLE}).yaml"), "--storage", settings.storage]


def _data_root(manifests: list[PodManifest], mount_path: str) -> str:
    """The one data folder every manifest reads, as a path in the pod."""
    roots = {yaml.safe_load(m.text)["data"]["root"] for m in manifests}
    if len(roots) != 1:
        raise UserError(f"--data-claim mounts one data folder, but the manifests read {len(roots)}: {', '.join(sorted(roots))}")
    return posixpath.normpath(posixpath.join(mount_path, roots.pop()))


def _metadata(name: str, settings: JobSettings, labels: dict[str, str], kind: str) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "labels": dict(labels)}  # a copy: no YAML anchors and aliases
    if settings.namespace:
        metadata["namespace"] = settings.namespace
    skips = checkov_skips(settings, kind)
    if skips:
        metadata["annotations"] = {f"checkov.io/skip{index}": skip for index, skip in enumerate(skips, 1)}
    return metadata


def _configmap(name: str, settings: JobSettings, labels: dict[str, str], data: dict[str, str]) -> dict[str, Any]:
    # Immutable and named after its content: a changed folder becomes a new ConfigMap, never new
    # files under a Job whose indexes were numbered for the old ones.
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _metadata(name, settings, labels, "ConfigMap"), "immutable": True, "data": data}


def _container(settings: JobSettings, mounts: list[dict[str, Any]], devices: int, resources: PodResources) -> dict[str, Any]:
    models = MODEL_CACHE if settings.model_cache_claim else CACHE
    env: list[dict[str, Any]] = [
        # Declared so the kubelet can substitute it in args; the Job controller keeps a declared one.
        {"name": INDEX_VARIABLE, "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
        {"name": "HF_HOME", "value": f"{models}/huggingface"},
        {"name": "QABENCH_MODEL_CACHE", "value": f"{models}/qabench"},
        # Per pod even with a shared model cache: the S3 store stages its uploads here.
        {"name": "QABENCH_WORKDIR", "value": f"{CACHE}/work"},
        # The image's /home/qabench is on the read-only root filesystem; libraries keep their caches
        # under HOME (triton's kernels, the assembled packaged GGUF), so it is the writable /tmp.
        {"name": "HOME", "value": TMP},
    ]
    # Only references: the kubelet reads the values from the Secret when it starts the pod.
    env += [{"name": variable, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}} for variable, secret, key in settings.secret_keys]
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": settings.image,
        # The kubelet checks this pod may pull the image (a node's cached copy of a private image is
        # not reused without credentials) and a re-pushed tag cannot leave nodes on different
        # images; an unchanged image costs one manifest request, its layers stay cached.
        "imagePullPolicy": "Always",
        "args": pod_args(settings),
        "env": env,
    }
    if settings.secrets:
        # AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, HF_TOKEN, ...: every key of each Secret.
        container["envFrom"] = [{"secretRef": {"name": secret}} for secret in settings.secrets]
    # Requests = limits, for CPU and memory too: the Guaranteed QoS class, evicted last under node
    # pressure and given whole cores by a static CPU manager. A pod over its memory is OOM-killed
    # (exit 137) and over its ephemeral storage evicted: either counts against the index's retries.
    amounts = {"cpu": resources.cpu, "memory": resources.memory, "ephemeral-storage": resources.ephemeral_storage}
    return container | {
        # `devices: N` runs N data-parallel processes under torchrun, one per GPU, in this one pod.
        "resources": {"requests": amounts, "limits": amounts | {"nvidia.com/gpu": devices}},
        # The "restricted" Pod Security Standard, plus a read-only root filesystem: the runner writes
        # only to its volumes (/cache: models and the S3 working folder; /tmp: tempfile's staging of
        # a trained model, torchrun's files, HOME); Python skips bytecode caches it cannot write.
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "privileged": False,
            "readOnlyRootFilesystem": True,
        },
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


def checkov_skips(settings: JobSettings, kind: str) -> list[str]:
    """`CHECK=reason` for each checkov check an object of `kind` fails on purpose (rendered as checkov.io/skip<N> annotations)."""
    skips = []
    if kind == "Job":
        if "@" not in settings.image:
            skips.append("CKV_K8S_43=--image has a fixed tag (untagged and latest are refused); pass IMAGE@sha256:DIGEST to pin its bytes")
        if settings.secrets or settings.secret_keys:
            skips.append("CKV_K8S_35=boto3 and huggingface_hub read credentials from the environment; only references to Secrets are rendered")
        skips.append("CKV_K8S_40=the image's user is uid 1000, the owner of its files (docker/Dockerfile); runAsNonRoot holds")
    if settings.namespace is None:
        skips.append("CKV_K8S_21=no --namespace: kubectl applies it to its current namespace")
    return skips


def _network_policy(name: str, settings: JobSettings, labels: dict[str, str]) -> dict[str, Any]:
    # The pods serve nothing: torchrun's ranks meet on the pod's loopback (--standalone). They only
    # reach out (S3, the hub), so ingress is denied and egress left to the namespace's policies.
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(name, settings, labels, "NetworkPolicy"),
        "spec": {"podSelector": {"matchLabels": dict(labels)}, "policyTypes": ["Ingress"]},
    }


def _job(name: str, settings: JobSettings, labels: dict[str, str], configmap: str, manifests: list[PodManifest], devices: int) -> dict[str, Any]:
    resources = pod_resources([m.needs for m in manifests], devices, settings)
    items = [{"key": m.key, "path": f"{index}.yaml"} for index, m in enumerate(manifests)]
    volumes: list[dict[str, Any]] = [
        {"name": "manifests", "configMap": {"name": configmap, "items": items}},
        # Disk-backed and without a sizeLimit: the container's ephemeral-storage limit bounds them together.
        {"name": "cache", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
        # NCCL between torchrun's ranks (and PyTorch's data loader workers, were any enabled) goes
        # through /dev/shm, which a container gets as 64 MiB.
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": resources.shm}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "manifests", "mountPath": settings.mount_path, "readOnly": True},
        {"name": "cache", "mountPath": CACHE},
        {"name": "tmp", "mountPath": TMP},
        {"name": "shm", "mountPath": "/dev/shm"},
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
    pod: dict[str, Any] = {
        "restartPolicy": "Never",  # required by podFailurePolicy; retries are new pods
        # On SIGTERM the runner finishes its training step or shard and saves it;
        # a generous grace period lets that land before the kubelet's SIGKILL.
        "terminationGracePeriodSeconds": GRACE_SECONDS,
        "automountServiceAccountToken": False,  # the runner never calls the Kubernetes API
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            # Claims are group-writable by the image's group; OnRootMismatch changes a model
            # cache's thousands of files once, not at every pod start.
            "fsGroup": RUN_AS,
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_container(settings, mounts, devices, resources)],
        "volumes": volumes,
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    }
    if settings.node_selector:
        # e.g. nvidia.com/gpu.product: speed figures from different cards are not comparable.
        pod["nodeSelector"] = dict(settings.node_selector)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(name, settings, labels, "Job"),
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
            "template": {"metadata": {"labels": dict(labels)}, "spec": pod},
        },
    }


def _json_size(document: dict[str, Any]) -> int:
    """Bytes of `document` as kubectl's last-applied-configuration annotation holds it (compact JSON)."""
    return len(json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()) + 1


def _documents(manifests: list[PodManifest], settings: JobSettings) -> tuple[dict[int, str], list[dict[str, Any]]]:
    """(GPUs per pod → Job name, [ConfigMap, NetworkPolicy, Job, ...]); UserError over a ConfigMap's 1 MiB."""
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
    documents = [_configmap(configmap, settings, labels, data), _network_policy(settings.name, settings, labels)]
    documents += [_job(names[n], settings, labels, configmap, [m for m in manifests if m.devices == n], n) for n in names]
    return names, documents


def render_notes(manifests: list[PodManifest], settings: JobSettings) -> list[str]:
    """What the reader of the rendered file must know: plain `kubectl apply` would fail, a model's
    size was guessed, a resource flag is below the estimate. Rendered in the header; `runner k8s --out` prints them."""
    names, documents = _documents(manifests, settings)
    notes = []
    annotation = _json_size(documents[0])
    if annotation > ANNOTATION_LIMIT:
        notes.append(f"the ConfigMap is {annotation:,} bytes as JSON, over the {ANNOTATION_LIMIT:,} of kubectl's last-applied "
                     "annotation: plain `kubectl apply` fails, --server-side is required")
    for pod in manifests:
        notes += [f"{pod.key}: {reason}; its pod's memory and disk assume {FALLBACK_MODEL}'s size (--memory, --ephemeral-storage override)"
                  for reason in pod.needs.unknown]
    for n, name in names.items():
        resources = pod_resources([m.needs for m in manifests if m.devices == n], n, settings)
        for flag, given, estimate in (("--memory", settings.memory, resources.estimated_memory), ("--ephemeral-storage", settings.ephemeral_storage, resources.estimated_storage)):
            if given is not None and quantity(given) < estimate:
                notes.append(f"{flag} {given} is below the {_gib(estimate)} estimated for Job {name}'s pods")
    return notes


def render(manifests: list[PodManifest], settings: JobSettings) -> str:
    """The ConfigMap, a NetworkPolicy and one Indexed Job per GPU count as one multi-document YAML text (same input, same bytes)."""
    names, documents = _documents(manifests, settings)
    header = [
        # Server-side apply keeps no last-applied annotation, whose 256 KiB a large ConfigMap exceeds.
        "# Generated by `python -m runner k8s`: kubectl apply --server-side -f THIS_FILE (or kubectl create -f THIS_FILE)",
        f"# ConfigMap {documents[0]['metadata']['name']}; image {settings.image}; storage {settings.storage}",
    ]
    header += [f"# note: {note}" for note in render_notes(manifests, settings)]
    for n, name in names.items():
        group = [m for m in manifests if m.devices == n]
        resources = pod_resources([m.needs for m in group], n, settings)
        header += [
            f"# Job {name}: {len(group)} index{'es' if len(group) > 1 else ''}, {n} GPU{'s' if n > 1 else ''} per pod; "
            f"requests = limits: cpu {resources.cpu}, memory {resources.memory}, ephemeral-storage {resources.ephemeral_storage}",
            "#   index  manifest",
        ] + [f"#   {index:5d}  {m.key}" for index, m in enumerate(group)]
    return "\n".join(header) + "\n" + "---\n".join(dump_yaml(document) for document in documents)

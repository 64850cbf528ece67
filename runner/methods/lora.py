"""`lora`: low-rank adapters on a full-precision base (Hu et al. 2021), via peft."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from runner import memory_plan as mp
from runner.methods import Method, MethodContext, TargetModules, peft_target_modules, register, require_modules
from runner.spec import Spec

# r ≤ 1024 and alpha ≤ 16 × 1024: a scale alpha/r above 16 (or 16·√1024 with rslora) only destabilises training.
ALPHA_MAX = 16_384


class LoraSpec(Spec):
    """LoRA: train rank-r updates W + (alpha/r)·BA of the target linear layers; the base stays frozen."""

    kind: Literal["lora"] = "lora"
    r: int = Field(16, ge=1, le=1024)
    """Rank of the update matrices."""
    alpha: float = Field(32, gt=0, le=ALPHA_MAX)
    """Scaling numerator: the update is multiplied by alpha/r (alpha/sqrt(r) with rslora)."""
    dropout: float = Field(0.05, ge=0, lt=1)
    """Dropout on the adapter input during training."""
    bias: Literal["none", "all", "lora_only"] = "none"
    """Which biases are trained alongside the adapters."""
    target_modules: TargetModules = "all-linear"  # documented and checked where TargetModules is declared
    rslora: bool = False
    """Rank-stabilised scaling alpha/sqrt(r) (Kalajdzievski 2023)."""
    dora: bool = False
    """Weight-decomposed LoRA (Liu et al. 2024): trains magnitude and direction separately."""


def lora_config(spec: LoraSpec, model: Any):
    """The peft LoraConfig for this spec, after checking explicit target names exist in the model."""
    from peft import LoraConfig

    targets = peft_target_modules(spec.target_modules)
    if targets != "all-linear":
        require_modules(model, targets, "method.target_modules")
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        bias=spec.bias,
        target_modules=targets,
        use_rslora=spec.rslora,
        use_dora=spec.dora,
    )


def apply(model: Any, spec: LoraSpec, context: MethodContext) -> Any:
    """Wrap the model in a peft LoRA model with only the adapters trainable."""
    from peft import get_peft_model

    return get_peft_model(model, lora_config(spec, model))


def memory(spec: Any, shape: mp.ModelShape, e: int, autocast: bool) -> mp.Adaptation:
    """What this method adds to a model's memory, for `runner plan --gpu-memory` (runner/memory_plan.py)."""
    targets = mp.adapted_linears(spec.target_modules, shape)
    sizes, saved, masked = mp.lora_shaped(shape, targets, spec.r, spec.dropout, 4, e, False, autocast)
    if spec.dora:
        sizes += [shape.linears()[n][1] for n in targets]
    params = sum(sizes) * shape.layers
    return mp.Adaptation(tuple(sizes * shape.layers), 4, saved, masked, min(mp.LAYER_POSITIONS[n] for n in targets), autocast_copies=mp.autocast_copies(params, 4, autocast))


register("lora", Method(spec=LoraSpec, apply=apply, trains=True, mergeable=True, memory=memory))

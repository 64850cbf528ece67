"""`full`: full fine-tuning — every weight of the model trains."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from runner.methods import Method, MethodContext, register
from runner.spec import Spec


class FullSpec(Spec):
    """Full fine-tuning: all parameters are updated; the saved result is a whole model, not an adapter."""

    kind: Literal["full"] = "full"
    freeze_embeddings: bool = False
    """Keep the input embedding matrix fixed (in Gemma 3 270M, 262,144 × 640 = 168M of its 268M
    parameters). When the output head shares that matrix, as in Gemma, the head stays fixed too."""


def apply(model: Any, spec: FullSpec, context: MethodContext) -> Any:
    """Mark every parameter trainable, except the input embeddings when asked."""
    for parameter in model.parameters():
        parameter.requires_grad = True
    if spec.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad = False
    return model


def save_trained(model: Any, folder: Path) -> None:
    """Save the whole model (transformers 5 always writes safetensors)."""
    model.save_pretrained(folder)


def load_trained(model: Any, folder: Path, spec: FullSpec) -> Any:
    """The saved model in the base model's dtype, on the base model's device."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=model.dtype).to(model.device)


register("full", Method(spec=FullSpec, apply=apply, trains=True, save_trained=save_trained, load_trained=load_trained))

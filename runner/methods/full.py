"""`full`: full fine-tuning — every weight of the model trains.

On a GPU the weights train as float32 master weights, whatever dtype the base was loaded in; the
trainer autocasts the forward and backward passes to bfloat16 when the base is bfloat16
(runner/training_stage.py `autocast_bf16`). bfloat16 keeps 8 significant bits, so an update below
about 2⁻⁹ of its weight rounds away: a step of 1e-5 on a weight of 0.02 (2.5 × 10⁻⁴ of it) is
lost in pure bfloat16 training. The memory per trained parameter rises from 2 + 2 + 4 bytes
(bf16 weight, gradient, AdamW's two bf16 moments) to 4 + 4 + 8 (float32 weight, gradient,
moments), plus the bf16 copies autocast makes of the weights during a step. The trained model is
saved in float32; evaluation loads it in the base's dtype.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from runner import memory_plan as mp
from runner.methods import Method, MethodContext, register
from runner.spec import Spec


class FullSpec(Spec):
    """Full fine-tuning: all parameters are updated; the saved result is a whole model, not an adapter."""

    kind: Literal["full"] = "full"
    freeze_embeddings: bool = False
    """Keep the input embedding matrix fixed (in Gemma 3 270M, 262,144 × 640 = 168M of its 268M
    parameters). When the output head shares that matrix, as in Gemma, the head stays fixed too."""


def apply(model: Any, spec: FullSpec, context: MethodContext) -> Any:
    """Mark every parameter trainable, except the input embeddings when asked; float32 on a GPU."""
    if context.device == "cuda" and master_dtype(model.dtype) != model.dtype:
        model.float()  # parameter by parameter: the peak is the float32 model plus one half-precision tensor
    for parameter in model.parameters():
        parameter.requires_grad = True
    if spec.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad = False
    return model


def master_dtype(dtype: Any) -> Any:
    """The dtype full fine-tuning keeps its weights in: float32 for half precision, else unchanged."""
    import torch

    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def save_trained(model: Any, folder: Path) -> None:
    """Save the whole model (transformers 5 always writes safetensors)."""
    model.save_pretrained(folder)


def load_trained(model: Any, folder: Path, spec: FullSpec) -> Any:
    """The saved (float32) model in the base model's dtype, on the base model's device."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=model.dtype).to(model.device)


def memory(spec: Any, shape: mp.ModelShape, e: int, autocast: bool) -> mp.Adaptation:
    """What this method adds to a model's memory, for `runner plan --gpu-memory` (runner/memory_plan.py)."""
    sizes = shape.parameter_sizes()
    if spec.freeze_embeddings:
        sizes = sizes[1:]  # the embedding comes first; a tied head is the same matrix, frozen with it
    # On a GPU a half-precision base becomes float32 master weights (see `apply`), and autocast keeps
    # a bfloat16 copy of each linear weight it multiplies by during the step.
    master = e < 4
    copies = 2 * sum(shape.linear_sizes()) if master and autocast else 0
    return mp.Adaptation(tuple(sizes), 4, full=True, float32_weights=master, autocast_copies=copies)


register("full", Method(spec=FullSpec, apply=apply, trains=True, save_trained=save_trained, load_trained=load_trained, memory=memory))

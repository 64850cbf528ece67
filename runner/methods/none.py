"""`none`: the base model as it is — the zero- and k-shot baselines."""

from __future__ import annotations

from typing import Any, Literal

from runner import memory_plan as mp
from runner.methods import Method, MethodContext, register
from runner.spec import Spec


class NoneSpec(Spec):
    """No adaptation: the pretrained weights are evaluated untouched and nothing is trained."""

    kind: Literal["none"] = "none"


def apply(model: Any, spec: NoneSpec, context: MethodContext) -> Any:
    """Return the model unchanged."""
    return model


def memory(spec: Any, shape: mp.ModelShape, e: int, autocast: bool) -> mp.Adaptation:
    """What this method adds to a model's memory, for `runner plan --gpu-memory` (runner/memory_plan.py)."""
    return mp.Adaptation()


register("none", Method(spec=NoneSpec, apply=apply, trains=False, memory=memory))

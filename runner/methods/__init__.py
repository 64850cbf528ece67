"""Adaptation methods: one module each, registering a `Method` record under its manifest kind.

Module name = manifest `method.kind`. A module must not import torch or peft at import time,
because validation builds the manifest union from this registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from runner.registry import Registry
from runner.spec import Spec


def _no_callbacks(model: Any, spec: Spec, total_steps: int) -> list:
    return []


def _save_pretrained(model: Any, folder: Path) -> None:
    model.save_pretrained(folder)


def _load_peft_adapter(model: Any, folder: Path) -> Any:
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(folder))


@dataclass(frozen=True)
class Method:
    """What the generic runner needs to know about a method, and nothing it must branch on."""

    spec: type[Spec]
    apply: Callable[[Any, Spec], Any]
    """Returns the model ready for training/inference (e.g. wrapped in a peft model)."""
    trains: bool
    """Whether the runner trains after `apply`; `none` does not."""
    trainer_callbacks: Callable[[Any, Spec, int], list] = _no_callbacks
    """transformers TrainerCallbacks a method needs (AdaLoRA's rank allocation), given total steps."""
    save_trained: Callable[[Any, Path], None] = _save_pretrained
    """Writes what training produced (a peft adapter saves only its own weights)."""
    load_trained: Callable[[Any, Path], Any] = _load_peft_adapter
    """Rebuilds the trained model from the base model and the saved folder (resume, re-evaluation)."""


METHODS: Registry[Method] = Registry(__name__, "method")


def register(kind: str, method: Method) -> Method:
    """Register a method under its manifest kind."""
    return METHODS.register(kind, method)

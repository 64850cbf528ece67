"""Decoding strategies: one module each, registering a `Decoding` record under its manifest kind.

Module name = manifest `decoding.kind`; modules import torch only inside their functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from pydantic import Field

from runner.registry import Registry
from runner.spec import Spec


class DecodingSpec(Spec):
    """Settings every decoding strategy shares."""

    max_new_tokens: int = Field(32, ge=1, le=8192)
    """Most tokens generated per answer (the prompt is not counted)."""
    batch_size: int = Field(8, ge=1, le=4096)
    """Prompts generated together; batches are grouped by prompt length to cut padding."""
    stop: tuple[str, ...] = ("\n",)
    """Generation stops at EOS or at the first of these strings, which is cut from the answer.
    The default newline suits base models that would otherwise write the next question."""


@dataclass(frozen=True)
class Decoding:
    """A decoding strategy: its manifest block and the `generate` keyword arguments it implies."""

    spec: type[DecodingSpec]
    generate_kwargs: Callable[[DecodingSpec], dict[str, Any]]


DECODINGS: Registry[Decoding] = Registry(__name__, "decoding strategy")


def register(kind: str, decoding: Decoding) -> Decoding:
    """Register a decoding strategy under its manifest kind."""
    return DECODINGS.register(kind, decoding)

"""Evaluation protocols: how an answer is obtained from the model, one module each, registering a
`Protocol` under its manifest name (`eval.protocol`).

`generate` lets the model write an answer (any format, any decoding strategy); `loglikelihood`
ranks the given answer choices by the probability the model assigns them, the way
lm-evaluation-harness and model reports score multiple choice and yes/no. Modules import torch
only inside their functions: validation builds the manifest from this registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from runner.registry import Registry

if TYPE_CHECKING:
    from runner.context import RunContext
    from runner.data import Example
    from runner.decoding import DecodingSpec
    from runner.generate import Query
    from runner.icl import PromptFormat
    from runner.models import LoadedModel
    from runner.prefix_cache import PrefixCache


@dataclass(frozen=True)
class Answering:
    """What one evaluation's batches are answered with, built once per run."""

    model: Any
    fmt: PromptFormat
    decoding: DecodingSpec
    device: str
    extra: dict[str, Any]
    """Per-run arguments a decoding strategy prepared (a speculative draft model)."""
    prefix_cache: PrefixCache | None


@dataclass(frozen=True)
class Protocol:
    """What the generic evaluation needs to know about a protocol."""

    formats: frozenset[str]
    """Answer formats it can answer; evaluating data of another format is refused before any model loads."""
    decodes: bool
    """Whether the decoding strategy applies; a protocol that never generates accepts only greedy,
    so no two manifests differ in a setting that changes nothing."""
    answer: Callable[[Answering, list[Query]], list[dict]]
    """One shard row per query of a batch (the columns of runner.shards.SHARD_SCHEMA)."""
    reserve: Callable[[PromptFormat, Example, DecodingSpec], int]
    """Context positions an example's prompt must leave free (new tokens, or its longest choice)."""
    summary: str
    """One line for `runner schema` and validation messages."""


PROTOCOLS: Registry[Protocol] = Registry(__name__, "protocol")


def register(name: str, protocol: Protocol) -> Protocol:
    """Register a protocol under its manifest name."""
    return PROTOCOLS.register(name, protocol)


def prepare(context: RunContext, target: LoadedModel, fmt: PromptFormat, prefix_cache: PrefixCache | None) -> Answering:
    """The per-run answering state: the decoding strategy's own preparation only when it applies."""
    decoding = context.manifest.decoding
    protocol = PROTOCOLS.get(context.manifest.eval.protocol)
    extra = context.decoding.prepare(decoding, context, target) if protocol.decodes else {}
    return Answering(target.model, fmt, decoding, target.device, extra, prefix_cache)

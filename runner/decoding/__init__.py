"""Decoding strategies: one module each, registering a `Decoding` record under its manifest kind.

Module name = manifest `decoding.kind`; modules import torch only inside their functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Callable, Literal

from pydantic import Field, field_validator

from runner.data.example import FORMATS
from runner.registry import Registry
from runner.spec import Spec

if TYPE_CHECKING:
    from runner.context import RunContext
    from runner.model_spec import DraftSpec
    from runner.models import LoadedModel


class DecodingSpec(Spec):
    """Settings every decoding strategy shares."""

    max_new_tokens: int = Field(32, ge=1, le=8192)
    """Most tokens generated per answer (the prompt is not counted)."""
    # Literal of a tuple expands to its members, so the schema offers exactly the FORMATS names.
    max_new_tokens_by_format: dict[Literal[FORMATS], Annotated[int, Field(ge=1, le=8192)]] = {}
    """Per-format overrides of max_new_tokens, e.g. {yes_no: 4, abstractive: 64}: short answers
    stop paying for long budgets (batches never mix budgets)."""

    def new_tokens_for(self, answer_format: str) -> int:
        """The generation budget for one answer format."""
        return self.max_new_tokens_by_format.get(answer_format, self.max_new_tokens)

    @property
    def largest_new_tokens(self) -> int:
        """The largest budget any format gets (what the prompt must leave room for)."""
        return max([self.max_new_tokens, *self.max_new_tokens_by_format.values()])
    batch_size: int = Field(8, ge=1, le=4096)
    """Prompts generated together; batches are grouped by prompt length to cut padding."""
    cache: Literal["dynamic", "static"] = "dynamic"
    """KV cache: `dynamic` grows per step (the eager path); `static` is preallocated, and on a
    GPU transformers then compiles the forward pass with torch.compile (first batches of each
    shape pay the compile; measure before choosing, see docs/benchmarks.md)."""
    compile: bool = True
    """With `cache: static`, let transformers compile the forward pass (GPUs only); false keeps
    the static cache eager."""
    warmup_batches: int = Field(1, ge=0, le=16)
    """Batches generated and discarded before timing starts (allocator, kernels, caches warm up)."""
    stop: tuple[str, ...] = ("\n",)
    """Generation stops at EOS or at the first of these strings, which is cut from the answer.
    The default newline suits base models that would otherwise write the next question."""

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(s == "" for s in value):
            raise ValueError("an empty stop string would end every answer before it starts")
        return value


def one_at_a_time(batch_size: int) -> int:
    """Reject batch sizes above 1 for strategies transformers runs one sequence at a time."""
    if batch_size != 1:
        raise ValueError("this strategy generates one prompt at a time (transformers does not batch assisted generation); set batch_size: 1")
    return batch_size


def _no_models(spec: DecodingSpec, context: RunContext, target: LoadedModel) -> dict[str, Any]:
    return {}


def _no_draft(spec: DecodingSpec) -> DraftSpec | None:
    return None


def _no_check(spec: DecodingSpec, context: RunContext) -> None:
    return None


def _no_processors(spec: DecodingSpec, example_ids: list[str]) -> list:
    return []


@dataclass(frozen=True)
class Decoding:
    """A decoding strategy: its manifest block and the `generate` keyword arguments it implies."""

    spec: type[DecodingSpec]
    generate_kwargs: Callable[[DecodingSpec], dict[str, Any]]
    prepare: Callable[[DecodingSpec, RunContext, LoadedModel], dict[str, Any]] = _no_models
    """Further `generate` arguments that need loaded models (a speculative draft), built once per run."""
    draft: Callable[[DecodingSpec], DraftSpec | None] = _no_draft
    """The draft block the strategy runs beside the target, if any: its weights (or training) are
    part of the evaluation's identity and its training is a stage of the run."""
    check: Callable[[DecodingSpec, RunContext], None] = _no_check
    """Checks needing files or tokenizers, run before any training or model load (UserError if wrong)."""
    logits_processors: Callable[[DecodingSpec, list[str]], list] = _no_processors
    """Logits processors for one batch, given its example ids in row order (seeded sampling)."""
    starts_from_prefix_cache: bool = True
    """Whether `generate` may start from a cache already holding the prompts' shared prefix.
    transformers' assisted generation assumes its cache and the prompt start together and gives
    other tokens when handed a prefilled one."""


DECODINGS: Registry[Decoding] = Registry(__name__, "decoding strategy")


def register(kind: str, decoding: Decoding) -> Decoding:
    """Register a decoding strategy under its manifest kind."""
    return DECODINGS.register(kind, decoding)

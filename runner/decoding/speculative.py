"""`speculative`: a small draft model proposes tokens that the target model verifies in one forward
pass (Leviathan et al. 2023). With greedy verification the answer equals plain greedy decoding."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from runner.decoding import Decoding, DecodingSpec, one_at_a_time, register
from runner.errors import UserError
from runner.model_spec import DraftSpec

if TYPE_CHECKING:
    from runner.context import RunContext
    from runner.models import LoadedModel


class SpeculativeSpec(DecodingSpec):
    """Assisted generation with a draft model."""

    kind: Literal["speculative"] = "speculative"
    batch_size: int = Field(1, ge=1, le=4096)
    """Must be 1: transformers runs assisted generation one sequence at a time."""
    draft: DraftSpec
    """The draft model (package, path or hub id, optionally with a saved adapter), e.g. a smaller
    model of the same family, or `manifest:` another manifest's fine-tuned model."""
    num_draft_tokens: int = Field(5, ge=1, le=64)
    """Tokens the draft proposes per verification step (the starting value for `heuristic`)."""
    schedule: Literal["constant", "heuristic"] = "heuristic"
    """`heuristic` grows the draft length after full acceptance and shrinks it after a rejection,
    starting again from `num_draft_tokens` for every prompt."""
    cross_tokenizer: bool = False
    """The draft uses a different tokenizer (universal assisted generation re-tokenizes its text)."""

    @field_validator("batch_size")
    @classmethod
    def _single_sequence(cls, value: int) -> int:
        return one_at_a_time(value)


def generate_kwargs(spec: SpeculativeSpec) -> dict[str, Any]:
    """Arguments for `model.generate` that need no model: greedy verification."""
    return {"do_sample": False, "num_beams": 1}


def _same_vocabulary(a: Any, b: Any) -> bool:
    return a.get_vocab() == b.get_vocab()


def configure_draft(draft: Any, spec: SpeculativeSpec) -> None:
    """Set the draft's proposal length and schedule on its generation config.

    transformers' `heuristic` carries the adapted length over to the next `generate` call, so a
    prompt's drafting would depend on the prompts before it (and the length can grow past a
    sliding window: Gemma 3 270M as a cross-tokenizer draft failed after ~40 prompts);
    `heuristic_transient` adapts the same way within one call and starts each call afresh."""
    draft.generation_config.num_assistant_tokens = spec.num_draft_tokens
    draft.generation_config.num_assistant_tokens_schedule = "heuristic_transient" if spec.schedule == "heuristic" else spec.schedule


def draft_of(spec: SpeculativeSpec) -> DraftSpec:
    """The draft block (its training, when it names a manifest, becomes a stage of the run)."""
    return spec.draft


def check_tokenizers(spec: SpeculativeSpec, context: RunContext) -> None:
    """Before anything is trained or loaded: a draft with another vocabulary needs `cross_tokenizer: true`."""
    from runner.models import load_model_tokenizer

    draft = context.draft
    target = load_model_tokenizer(context.manifest.model, context.loaded.base_dir)
    proposer = load_model_tokenizer(draft.model_spec, draft.owner.base_dir)
    if not _same_vocabulary(target, proposer) and not spec.cross_tokenizer:
        named = f"the model of {draft.owner.path.name}" if draft.owner is not context.loaded else "the draft"
        raise UserError(f"decoding.draft: {named} has a tokenizer that differs from the target model's; set decoding.cross_tokenizer: true")


def prepare(spec: SpeculativeSpec, context: RunContext, target: LoadedModel) -> dict[str, Any]:
    """Load the draft once (with its trained weights or adapter) and return the assisted-generation arguments."""
    from runner.training_stage import load_draft

    draft = load_draft(context.draft, context.store)
    same = _same_vocabulary(draft.tokenizer, target.tokenizer)
    if not same and not spec.cross_tokenizer:
        raise UserError("decoding.draft: its tokenizer differs from the target model's; set decoding.cross_tokenizer: true")
    configure_draft(draft.model, spec)
    kwargs: dict[str, Any] = {"assistant_model": draft.model}
    if not same:
        kwargs.update(tokenizer=target.tokenizer, assistant_tokenizer=draft.tokenizer)
    return kwargs


register(
    "speculative",
    Decoding(
        spec=SpeculativeSpec,
        generate_kwargs=generate_kwargs,
        prepare=prepare,
        draft=draft_of,
        check=check_tokenizers,
        starts_from_prefix_cache=False,
    ),
)

"""`prompt_lookup`: draft tokens copied from the prompt by n-gram match (Saxena 2023), verified by
the model — no draft model; strong on extractive QA, where the answer is a span of the context."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from runner.decoding import Decoding, DecodingSpec, one_at_a_time, register


class PromptLookupSpec(DecodingSpec):
    """Greedy decoding sped up by copying candidate continuations from the prompt."""

    kind: Literal["prompt_lookup"] = "prompt_lookup"
    batch_size: int = Field(1, ge=1, le=4096)
    """Must be 1: transformers verifies candidates for one sequence at a time."""
    num_tokens: int = Field(10, ge=1, le=128)
    """Candidate tokens copied per lookup."""
    max_ngram: int = Field(2, ge=1, le=16)
    """Longest n-gram at the end of the text matched against the prompt."""

    @field_validator("batch_size")
    @classmethod
    def _single_sequence(cls, value: int) -> int:
        return one_at_a_time(value)

    @field_validator("cache")
    @classmethod
    def _growing_cache(cls, value: str) -> str:
        if value == "static":
            # transformers verifies copied candidates past the preallocated length and fails.
            raise ValueError("prompt lookup needs the dynamic cache; remove cache: static")
        return value


def generate_kwargs(spec: PromptLookupSpec) -> dict[str, Any]:
    """Arguments for `model.generate`: greedy with prompt-lookup candidates."""
    return {"do_sample": False, "num_beams": 1, "prompt_lookup_num_tokens": spec.num_tokens, "max_matching_ngram_size": spec.max_ngram}


register("prompt_lookup", Decoding(spec=PromptLookupSpec, generate_kwargs=generate_kwargs, starts_from_prefix_cache=False))

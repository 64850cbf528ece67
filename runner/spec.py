"""Base class for every manifest block: unknown keys are errors and parsed blocks are immutable.

Also the numeric types blocks share, so every seed and step count has one range everywhere.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Spec(BaseModel):
    """A manifest block: validated once at the boundary, then trusted and never mutated.

    Floats must be finite: `.inf` or `.nan` in any field is an error, never a value to train with.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_boolean_for_a_number(cls, data: Any) -> Any:
        # pydantic's lax mode reads `true` as 1 in a number field (`shard_size: true` would be 1).
        # A stand-in the number types refuse keeps the error at the field, and at its line.
        if not isinstance(data, dict):
            return data
        fields = cls.model_fields
        return {
            key: _Boolean(value) if isinstance(value, bool) and key in fields and _numbers_only(fields[key].annotation) else value
            for key, value in data.items()
        }


class _Boolean:
    """A YAML boolean written where a number belongs."""

    def __init__(self, value: bool):
        self.value = value

    def __repr__(self) -> str:
        return str(self.value).lower()


def _numbers_only(annotation: Any) -> bool:
    """Whether a field takes numbers (and maybe None) but no boolean."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
    else:
        options = [annotation]
    return bool(options) and all(option in (int, float) for option in options)


SEED_MAX = 2**32 - 1
"""Largest seed: numpy's generators (which transformers' set_seed seeds) take 0 ≤ seed < 2^32."""

Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]
"""A random seed, 0 to 2^32 − 1."""

STEPS_MAX = 10_000_000
"""Most optimizer steps (and step intervals) a manifest may ask for: 10M steps at a generous
10 steps a second is 11 days, longer than any run this runner is for."""

EXAMPLES_MAX = 100_000_000
"""Most examples a count of examples may name (the largest UnifiedQA split has under 1M)."""

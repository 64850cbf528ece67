"""Base class for every manifest block: unknown keys are errors and parsed blocks are immutable.

Also the numeric types blocks share, so every seed and step count has one range everywhere.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class Spec(BaseModel):
    """A manifest block: validated once at the boundary, then trusted and never mutated.

    Floats must be finite: `.inf` or `.nan` in any field is an error, never a value to train with.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True, allow_inf_nan=False)


SEED_MAX = 2**32 - 1
"""Largest seed: numpy's generators (which transformers' set_seed seeds) take 0 ≤ seed < 2^32."""

Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]
"""A random seed, 0 to 2^32 − 1."""

STEPS_MAX = 10_000_000
"""Most optimizer steps (and step intervals) a manifest may ask for: 10M steps at a generous
10 steps a second is 11 days, longer than any run this runner is for."""

EXAMPLES_MAX = 100_000_000
"""Most examples a count of examples may name (the largest UnifiedQA split has under 1M)."""

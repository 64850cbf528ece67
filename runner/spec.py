"""Base class for every manifest block: unknown keys are errors and parsed blocks are immutable."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Spec(BaseModel):
    """A manifest block: validated once at the boundary, then trusted and never mutated."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

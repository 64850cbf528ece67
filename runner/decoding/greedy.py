"""`greedy`: the most likely token at every step — deterministic, the reference for speed-ups."""

from __future__ import annotations

from typing import Any, Literal

from runner.decoding import Decoding, DecodingSpec, register


class GreedySpec(DecodingSpec):
    """Greedy decoding."""

    kind: Literal["greedy"] = "greedy"


def generate_kwargs(spec: GreedySpec) -> dict[str, Any]:
    """Arguments for `model.generate`."""
    return {"do_sample": False, "num_beams": 1}


register("greedy", Decoding(spec=GreedySpec, generate_kwargs=generate_kwargs))

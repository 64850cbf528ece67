"""Counting what assisted generation does: draft tokens proposed and accepted, target forward passes.

transformers reports neither, so `count_generation` wraps the two places that know, for the
duration of one `generate` call: the candidate generator the target builds (its `get_candidates`
returns the proposal, `update_candidate_strategy` receives how many of it matched) and the
target's forward pass (a hook). Nothing about the computation changes.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator


@dataclass
class GenerationCounts:
    """Tallies for one `generate` call."""

    target_forwards: int = 0
    """Forward passes of the target model, prefill included."""
    proposed: int | None = None
    """Draft tokens offered for verification; None when no candidate generator ran (plain decoding)."""
    accepted: int | None = None
    """Proposed tokens the target agreed with (the bonus token it adds itself is not counted)."""

    @property
    def acceptance_rate(self) -> float | None:
        """accepted / proposed, or None when nothing was proposed."""
        return self.accepted / self.proposed if self.proposed else None


def _transformers_model(model: Any) -> Any:
    """The transformers model that runs `generate`'s loops (under a peft wrapper, its base model)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _counting(generator: Any, counts: GenerationCounts) -> Any:
    get_candidates = generator.get_candidates
    update = generator.update_candidate_strategy
    counts.proposed, counts.accepted = 0, 0

    def counted_get_candidates(input_ids, *args, **kwargs):
        candidates, logits = get_candidates(input_ids, *args, **kwargs)
        counts.proposed += candidates.shape[1] - input_ids.shape[1]
        return candidates, logits

    def counted_update(input_ids, scores, num_matches):
        counts.accepted += int(num_matches)
        return update(input_ids, scores, num_matches)

    generator.get_candidates = counted_get_candidates
    generator.update_candidate_strategy = counted_update
    return generator


@contextmanager
def count_generation(model: Any) -> Iterator[GenerationCounts]:
    """Count target forwards and, for assisted strategies, proposals and acceptances."""
    target = _transformers_model(model)
    counts = GenerationCounts()

    def on_forward(module, inputs, output):
        counts.target_forwards += 1

    hook = target.register_forward_hook(on_forward)
    build = target._get_candidate_generator

    def counted_build(*args, **kwargs):
        return _counting(build(*args, **kwargs), counts)

    # An instance attribute shadows the class method for this call only.
    target._get_candidate_generator = counted_build
    try:
        yield counts
    finally:
        del target._get_candidate_generator
        hook.remove()

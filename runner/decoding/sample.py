"""`sample`: temperature / top-k / top-p sampling with one seeded generator per example.

transformers samples from torch's global generator, so answers would depend on batch order and
on everything else that draws from it. Here a logits processor draws each row's token from that
example's own `torch.Generator` (seeded by the manifest seed and the example id) and leaves only
that token possible; generation itself runs greedy. An example's answer is then the same in any
batch, at any batch size, on any rerun.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from pydantic import Field

from runner.decoding import Decoding, DecodingSpec, register
from runner.spec import Seed


class SampleSpec(DecodingSpec):
    """Stochastic decoding, reproducible per example."""

    kind: Literal["sample"] = "sample"
    temperature: float = Field(0.7, gt=0, le=10)
    """Logits are divided by this before sampling: lower is closer to greedy."""
    top_k: int = Field(0, ge=0, le=1_000_000)
    """Sample among the k most likely tokens (0 = no limit)."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Sample among the most likely tokens whose probabilities add up to p (nucleus)."""
    seed: Seed = 0
    """With the example id, seeds each example's generator."""


def generate_kwargs(spec: SampleSpec) -> dict[str, Any]:
    """Greedy over scores in which the processor left a single sampled token."""
    return {"do_sample": False, "num_beams": 1}


def _row_seed(seed: int, example_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{example_id}".encode()).digest()[:8], "little")


def logits_processors(spec: SampleSpec, example_ids: list[str]) -> list:
    """One processor that samples every row with its example's own generator."""
    import torch
    from transformers import LogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    warpers = [TemperatureLogitsWarper(spec.temperature)]
    if spec.top_k:
        warpers.append(TopKLogitsWarper(spec.top_k))
    if spec.top_p < 1:
        warpers.append(TopPLogitsWarper(spec.top_p))

    class SeededSampler(LogitsProcessor):
        def __init__(self):
            self.generators: list[torch.Generator] | None = None

        def __call__(self, input_ids, scores):
            if self.generators is None:
                self.generators = [torch.Generator(device=scores.device).manual_seed(_row_seed(spec.seed, i)) for i in example_ids]
            for warper in warpers:
                scores = warper(input_ids, scores)
            probs = torch.softmax(scores.float(), dim=-1)
            chosen = torch.stack([torch.multinomial(probs[row], 1, generator=g) for row, g in enumerate(self.generators)])
            only = torch.full_like(scores, float("-inf"))
            return only.scatter(1, chosen, 0.0)

        def select_rows(self, rows: list[int]) -> None:
            """Rows that finished left the batch: keep the generators of those that stay."""
            if self.generators is not None:
                self.generators = [self.generators[row] for row in rows]

    return [SeededSampler()]


register("sample", Decoding(spec=SampleSpec, generate_kwargs=generate_kwargs, logits_processors=logits_processors))

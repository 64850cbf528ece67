"""What the GPU tier's tests share: the device and dtype they run in, the wider random model, agreement.

Random weights, no download (the GPU host has no network): the tiny models of tests/tiny_models.py
and a wider Llama built from a config with the same tokenizer, where bfloat16 numerics matter.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Sequence

DRY_RUN = "QABENCH_GPU_DRY_RUN"
"""Set to 1: the tier runs on the CPU in float32 (a dry run of its code), with exact bounds."""

# The wider model on a GPU: 6 layers of a 1024-wide Llama (GQA 16/4 heads), about 62M parameters
# with the tests' 600-token vocabulary: big enough for bf16 rounding to matter, built in seconds.
WIDE = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=6, num_attention_heads=16, num_key_value_heads=4, head_dim=64)
# The dry run's: the same architecture, every dimension shrunk (the tier's code, none of the cost).
WIDE_DRY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16)
LOGIT_STD = 4.0
"""Standard deviation of the wide model's logits. A standard initialisation (0.02) gives a random
model nearly flat next-token distributions, whose argmax any rounding flips; trained models are
peaked. The output head is drawn with std LOGIT_STD / sqrt(hidden) so that a logit over a
unit-RMS hidden state has std LOGIT_STD."""


@dataclass(frozen=True)
class Tier:
    """Where the tier runs: CUDA in bfloat16, or the CPU in float32 for a dry run."""

    device: str
    dtype: Any
    dry_run: bool

    def floor(self, gpu: float) -> float:
        """The least agreement a measurement must reach: `gpu` in bf16, exactly 1.0 in the float32 dry run
        (where the CPU suite already proves equality)."""
        return 1.0 if self.dry_run else gpu

    def examples(self, gpu: int) -> int:
        """How many examples (a dataset) a test uses: `gpu` on a GPU, where agreement is a statistic;
        a third of it (at least 1) in the dry run, which checks the tier's code, not numbers."""
        return gpu if not self.dry_run else max(1, gpu // 3)

    def slack(self, gpu: float) -> float:
        """A tolerance that is `gpu` in bf16 and none in the dry run."""
        return 0.0 if self.dry_run else gpu


def current_tier() -> Tier:
    """The tier for this process: the dry run when asked for, else CUDA (the caller skips without it)."""
    import torch

    if os.environ.get(DRY_RUN) == "1" or not torch.cuda.is_available():
        return Tier("cpu", torch.float32, dry_run=True)
    return Tier("cuda", torch.bfloat16, dry_run=False)


def wide_model(tokenizer: Any, tier: Tier, seed: int = 0):
    """A random-weight Llama of the WIDE shape (WIDE_DRY in a dry run) for `tokenizer`, on the tier's device."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    shape = WIDE_DRY if tier.dry_run else WIDE
    config = LlamaConfig(
        vocab_size=len(tokenizer), max_position_embeddings=2048, tie_word_embeddings=False, initializer_range=0.02,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **shape,
    )
    # from_config draws from torch's global generators: seeded inside fork_rng, which restores them after.
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if tier.device == "cuda" else []):
        torch.manual_seed(seed)
        with torch.device(tier.device):
            model = AutoModelForCausalLM.from_config(config, dtype=tier.dtype)
        generator = torch.Generator(tier.device).manual_seed(seed + 1)
        with torch.no_grad():
            model.lm_head.weight.normal_(0.0, LOGIT_STD / math.sqrt(config.hidden_size), generator=generator)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


@dataclass(frozen=True)
class Agreement:
    """How far two runs' answers agree, over the same example ids."""

    identical: float
    """Share of answers whose text is identical."""
    prefix: float
    """Mean over answers of (characters before the first difference) / (the longer answer's
    length); 1.0 for two empty answers. Greedy decoding diverges for good after one flipped
    token, so this measures how early rounding flips one."""
    n: int

    def as_dict(self) -> dict[str, float]:
        return {"identical": round(self.identical, 4), "prefix": round(self.prefix, 4), "n": self.n}


def agreement(a: dict[str, str], b: dict[str, str]) -> Agreement:
    """Agreement of two {example id: answer text} maps with the same ids."""
    assert a.keys() == b.keys(), "the two runs answered different examples"
    same, prefixes = 0, []
    for key in a:
        x, y = a[key], b[key]
        same += x == y
        common = next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
        prefixes.append(1.0 if not x and not y else common / max(len(x), len(y)))
    return Agreement(same / len(a), sum(prefixes) / len(prefixes), len(a))


def answers(rows: Sequence[dict]) -> dict[str, str]:
    """{example id: raw answer text} of prediction rows."""
    return {r["id"]: r["raw_output"] for r in rows}

"""Shared prompt prefix: the tokens every prompt of a batch starts with (chat header, instruction,
shots shared by all queries) go through the model once, and the batch continues from copies of
their keys and values instead of recomputing them in every row.

On a compute-bound device prefill dominates QA generation (prompts are several times longer than
answers), so this is the largest saving batching leaves. The batch is laid out as
`[prefix][padding][suffix]`: position ids follow the attention mask, so every real token keeps
the position it has in an unpadded prompt and greedy answers stay those of plain generation.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Any, Sequence

from runner.generate import left_pad


PREFILL_ROWS = 8
"""Prompts prefilled together: 8 suffixes of ~60 tokens make matrix products large enough to run
at full speed on a CPU while padding within the group stays small."""


@dataclass(frozen=True)
class PrefixedBatch:
    """generate() inputs for a batch whose first `prefix_tokens` columns are already cached."""

    input_ids: Any
    attention_mask: Any
    cache: Any
    prefix_tokens: int


def shared_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Tokens all sequences start with, leaving every sequence at least one token to feed."""
    return min(len(os.path.commonprefix([list(s) for s in sequences])), min(len(s) for s in sequences) - 1)


class PrefixCache:
    """The keys and values of the latest shared prefix, reused by the next batch as far as the two
    prefixes agree (one run's batches share the chat header and instruction, often the shots)."""

    def __init__(self, model: Any, device: str):
        self.model = model
        self.device = device
        self._tokens: list[int] = []
        self._cache: Any = None
        self.computed_tokens = 0
        """Prefix tokens run through the model so far (the work the batches did not repeat)."""

    def _window(self) -> int | None:
        """The model's sliding attention window, or None when no layer slides."""
        config = self.model.config.get_text_config()
        layer_types = getattr(config, "layer_types", None)
        window = getattr(config, "sliding_window", None)
        if layer_types is not None and not any("sliding" in str(kind) for kind in layer_types):
            return None
        return window

    def _prefix_cache(self, tokens: list[int]):
        """A batch-1 cache holding `tokens`, built from the previous prefix where they agree."""
        import torch
        from transformers import DynamicCache

        agree = len(os.path.commonprefix([self._tokens, tokens])) if self._cache is not None else 0
        if agree == 0:
            cache = DynamicCache(config=self.model.config)
        else:
            cache = copy.deepcopy(self._cache)
            cache.crop(agree - len(self._tokens))
        if agree < len(tokens):
            self.computed_tokens += len(tokens) - agree
            with torch.inference_mode():
                self.model(input_ids=torch.tensor([tokens[agree:]], device=self.device), cache=cache, use_cache=True, logits_to_keep=1)
        self._tokens, self._cache = list(tokens), cache
        return cache

    def _continue(self, prefix: Any, suffixes: Sequence[Sequence[int]], pad_id: int, keep: int):
        """A copy of the prefix cache per suffix, extended by the left-padded suffixes, and the
        logits of their last `keep` positions (None when no suffix has a token)."""
        import torch

        cache = copy.deepcopy(prefix)
        cache.batch_repeat_interleave(len(suffixes))
        prefix_tokens = cache.get_seq_length()
        if not max(len(s) for s in suffixes):
            return cache, None
        ids, mask = left_pad(suffixes, pad_id, self.device)
        mask = torch.cat([torch.ones((len(suffixes), prefix_tokens), dtype=mask.dtype, device=self.device), mask], dim=1)
        # Positions follow the mask, so every real token keeps its position in the unpadded prompt.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, prefix_tokens:]
        with torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True, logits_to_keep=keep).logits
        return cache, logits

    def tail_logits(self, sequences: Sequence[Sequence[int]], pad_id: int, keep: int, shareable: int):
        """Logits of the last `keep` positions of every sequence, [rows, keep, vocabulary], with
        at most the first `shareable` tokens computed once for all; None when nothing is shared.

        Scoring continuations needs the logits of their positions, so those must lie after the
        shared prefix (`shareable`, the caller's bound) and every sequence keeps `keep` tokens
        of its own. Rows go through in groups of PREFILL_ROWS, as prompts are prefilled for
        generation: bench/loglikelihood.py on CPU (SmolLM2-135M, 32 zero-shot questions, 96
        choices) took 9.2 s in groups of 8, 10.3 s in one pass, 12.4 s without sharing."""
        import torch

        shared = min(shared_prefix_length(sequences), shareable, min(len(s) for s in sequences) - keep)
        window = self._window()
        if shared < 1 or (window is not None and max(len(s) for s in sequences) > window):
            return None
        prefix = self._prefix_cache(list(sequences[0][:shared]))
        parts = [
            self._continue(prefix, [s[shared:] for s in sequences[start : start + PREFILL_ROWS]], pad_id, keep)[1]
            for start in range(0, len(sequences), PREFILL_ROWS)
        ]
        return torch.cat(parts)

    def _suffix_cache(self, prefix: Any, suffixes: Sequence[Sequence[int]], pad_id: int, width: int):
        """Keys and values of the prefix plus `suffixes`, each right-aligned in `width` columns
        after the prefix; the gap is zeros that the attention mask hides."""
        import torch

        prefix_tokens = prefix.get_seq_length()
        longest = max(len(s) for s in suffixes)
        cache, _ = self._continue(prefix, suffixes, pad_id, 1)
        layers = []
        for layer in cache.layers:
            keys, values = layer.keys, layer.values
            gap = torch.zeros((*keys.shape[:2], width - longest, keys.shape[3]), dtype=keys.dtype, device=keys.device)
            layers.append(
                (
                    torch.cat([keys[:, :, :prefix_tokens], gap, keys[:, :, prefix_tokens:]], dim=2),
                    torch.cat([values[:, :, :prefix_tokens], gap, values[:, :, prefix_tokens:]], dim=2),
                )
            )
        return layers

    def prepare(self, sequences: Sequence[Sequence[int]], pad_id: int, max_new_tokens: int) -> PrefixedBatch | None:
        """Inputs and a cache holding every prompt token but the last, or None when the prompts
        share no prefix.

        Prompts are prefilled in groups of similar length (the batch arrives sorted by length),
        so padding costs little compute, then decoded together, where a large batch pays. With
        sliding-window attention the gap between prefix and suffix would take window slots a
        real token has in plain generation, so a batch that could outgrow the window is
        generated the plain way."""
        import torch
        from transformers import StaticCache

        shared = shared_prefix_length(sequences)
        window = self._window()
        if shared < 1 or (window is not None and max(len(s) for s in sequences) + max_new_tokens > window):
            return None
        prefix = self._prefix_cache(list(sequences[0][:shared]))
        width = max(len(s) for s in sequences) - shared - 1
        groups = [
            self._suffix_cache(prefix, [s[shared:-1] for s in sequences[start : start + PREFILL_ROWS]], pad_id, width)
            for start in range(0, len(sequences), PREFILL_ROWS)
        ]
        # Preallocated for the whole answer: a growing cache would copy every row's keys and
        # values, prefix included, at each decoding step (most of a step's time on a CPU).
        cache = StaticCache(config=self.model.config, max_cache_len=shared + width + 1 + max_new_tokens)
        for index, parts in enumerate(zip(*groups)):
            cache.update(torch.cat([k for k, _ in parts]), torch.cat([v for _, v in parts]), index)
        suffix_ids, suffix_mask = left_pad([s[shared:] for s in sequences], pad_id, self.device)
        prefix_ids = torch.tensor([list(sequences[0][:shared])], device=self.device).expand(len(sequences), -1)
        return PrefixedBatch(
            input_ids=torch.cat([prefix_ids, suffix_ids], dim=1),
            attention_mask=torch.cat([torch.ones_like(prefix_ids), suffix_mask], dim=1),
            cache=cache,
            prefix_tokens=shared,
        )

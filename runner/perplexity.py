"""Perplexity of the reference answers given each evaluation prompt, for any model, trained or not.

The answer is tokenized exactly as the trainer tokenizes its targets (`PromptFormat.completion`
of the first reference, end-of-answer markup included), so a fine-tuned model's number here is
comparable with its held-out perplexity from training, and with a prompted model's.
"""

from __future__ import annotations

from typing import Any, Sequence

from runner.generate import Query, left_pad
from runner.icl import PromptFormat


def _answer_ids(fmt: PromptFormat, query: Query) -> list[int]:
    text = fmt.completion(query.prompt, query.example.answers[0])
    return fmt.tokenizer(text, add_special_tokens=False)["input_ids"]


def reference_nll(model: Any, fmt: PromptFormat, batch: Sequence[Query], device: str, context_length: int) -> list[tuple[float, int]]:
    """(summed negative log-likelihood, answer tokens) of each query's first reference answer."""
    import torch

    sequences, answer_lengths = [], []
    for query in batch:
        answer = _answer_ids(fmt, query)[: max(1, context_length - len(query.input_ids))]
        sequences.append(query.input_ids + answer)
        answer_lengths.append(len(answer))
    ids, mask = left_pad(sequences, fmt.tokenizer.pad_token_id, device)
    width = ids.shape[1]
    # Answers sit at the end of every left-padded row, so only the last `keep` positions need
    # logits: all of them would be batch × length × vocabulary floats (tens of GB for Gemma's
    # 262k-token vocabulary at batch 25).
    keep = max(answer_lengths) + 1
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits
    predicting = logits[:, -keep:-1, :].float()  # positions width-keep .. width-2
    targets = ids[:, width - keep + 1 :].to(predicting.device)
    picked = predicting.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    token_nll = torch.logsumexp(predicting, dim=-1) - picked
    return [(token_nll[row, -length:].sum().item(), length) for row, length in enumerate(answer_lengths)]

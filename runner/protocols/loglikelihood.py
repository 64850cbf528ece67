"""`loglikelihood`: rank a question's answer choices by the log-probability the model gives each,
as lm-evaluation-harness does for multiple choice (and model reports for BoolQ or ARC).

Each choice is a continuation of the prompt: in a plain prompt " <choice>" (the harness's
default target delimiter, a space), in a chat prompt the assistant's reply `<choice>`. It is
tokenized as the harness does — the prompt alone, then prompt + continuation, the continuation
being the tokens after the prompt's — and its log-probability is the sum over its tokens, with
no end-of-sequence token appended. The row's `prediction` is the choice with the highest sum
(`acc`); `acc_norm` divides each sum by the choice's length in characters (both scorers in
runner/scoring). Every (query, choice) pair of a batch goes through the model in one forward
pass; the prompt prefix the batch shares is computed once when the method allows it.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from runner.protocols import Answering, Protocol, register

YES_NO_CHOICES = ("yes", "no")
"""The choices of a yes/no question, in UnifiedQA's spelling of its answers."""


def choices_of(example: Any) -> tuple[str, ...]:
    """The answers ranked for one example: its options, or yes and no."""
    if example.format == "yes_no":
        return YES_NO_CHOICES
    return tuple(text for _, text in example.options)


def split_trailing_space(context: str, continuation: str) -> tuple[str, str]:
    """The harness moves whitespace ending the context to the start of the continuation."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        return context[:-spaces], context[-spaces:] + continuation
    return context, continuation


def continuation_ids(fmt: Any, query: Any, choice: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) of one choice, tokenized the way the harness tokenizes them."""
    prompt = query.prompt
    if fmt.chat:
        # The template's generation header ends the context; its newline is not the answer's.
        context, continuation = prompt.text, choice
    else:
        context, continuation = split_trailing_space(prompt.text, f" {choice}")
    encode = lambda text: fmt.tokenizer(text, add_special_tokens=prompt.add_special_tokens)["input_ids"]  # noqa: E731
    context_ids = query.input_ids if context == prompt.text else encode(context)
    whole = encode(context + continuation)
    tail = whole[len(context_ids):]
    if not tail:
        tail = fmt.tokenizer(continuation, add_special_tokens=False)["input_ids"]
    return list(context_ids), list(tail)


def _logits_of_tails(state: Answering, sequences: list[list[int]], keep: int, shareable: int):
    """Logits of the last `keep` positions of every sequence, [rows, keep, vocabulary]."""
    import torch

    from runner.generate import left_pad

    pad = state.fmt.tokenizer.pad_token_id
    if state.prefix_cache is not None:
        logits = state.prefix_cache.tail_logits(sequences, pad, keep, shareable)
        if logits is not None:
            return logits
    ids, mask = left_pad(sequences, pad, state.device)
    with torch.inference_mode():
        return state.model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits


def choice_logprobs(state: Answering, batch: Sequence[Any]) -> tuple[list[list[float]], list[list[int]]]:
    """Summed log-probability and token count of every choice of every query in the batch."""
    import torch

    pairs = [continuation_ids(state.fmt, query, choice) for query in batch for choice in choices_of(query.example)]
    sequences = [context + tail for context, tail in pairs]
    lengths = [len(tail) for _, tail in pairs]
    keep = max(lengths) + 1
    # Logits that score a continuation must come after the shared prefix: the position before
    # its first token is the context's last.
    shareable = min(len(context) for context, _ in pairs) - 1
    logits = _logits_of_tails(state, sequences, keep, shareable)
    predicting = torch.log_softmax(logits[:, :-1, :].float(), dim=-1)
    sums = []
    for row, (sequence, length) in enumerate(zip(sequences, lengths)):
        targets = torch.tensor(sequence[-length:], device=predicting.device)
        sums.append(predicting[row, -length:].gather(-1, targets.unsqueeze(-1)).sum().item())
    per_query, per_tokens, start = [], [], 0
    for query in batch:
        count = len(choices_of(query.example))
        per_query.append(sums[start : start + count])
        per_tokens.append(lengths[start : start + count])
        start += count
    return per_query, per_tokens


def answer(state: Answering, batch: list) -> list[dict]:
    import torch

    from runner.generate import query_columns
    from runner.memory import peak_memory_bytes, reset_peak_memory

    reset_peak_memory(state.device)
    if state.device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    logprobs, tokens = choice_logprobs(state, batch)
    if state.device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    peak = peak_memory_bytes(state.device)
    rows = []
    for query, sums, counts in zip(batch, logprobs, tokens):
        choices = choices_of(query.example)
        best = max(range(len(sums)), key=lambda i: (sums[i], -i))  # ties go to the first choice, as argmax does
        rows.append(
            {
                **query_columns(query),
                "prediction": choices[best],
                "raw_output": "",
                "output_tokens": 0,
                "stopped": True,
                "batch_size": len(batch),
                "batch_seconds": seconds,
                "batch_first_token_seconds": None,
                "batch_peak_memory_bytes": peak,
                "batch_output_tokens": 0,
                "batch_target_forwards": 1,
                "draft_proposed_tokens": 0,
                "draft_accepted_tokens": 0,
                "protocol": "loglikelihood",
                "choices": list(choices),
                "choice_logprobs": list(sums),
                "choice_tokens": list(counts),
            }
        )
    return rows


def reserve(fmt, example, decoding) -> int:
    # Tokenized alone, a continuation can take one token more or less than after its prompt.
    return 1 + max(len(fmt.tokenizer(f" {choice}", add_special_tokens=False)["input_ids"]) for choice in choices_of(example))


register(
    "loglikelihood",
    Protocol(
        formats=frozenset({"yes_no", "multiple_choice"}),
        decodes=False,
        answer=answer,
        reserve=reserve,
        summary="ranks the options (multiple choice) or yes/no by summed log-probability, as lm-evaluation-harness does",
    ),
)

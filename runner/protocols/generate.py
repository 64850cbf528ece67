"""`generate`: the model writes its answer with the manifest's decoding strategy."""

from __future__ import annotations

from runner.data.example import FORMATS
from runner.protocols import Answering, Protocol, register


def answer(state: Answering, batch: list) -> list[dict]:
    from runner.generate import generate_batch

    rows = generate_batch(state.model, state.fmt.tokenizer, batch, state.decoding, state.device, state.extra, state.prefix_cache)
    return [{**row, "protocol": "generate", "choices": [], "choice_logprobs": [], "choice_tokens": []} for row in rows]


def reserve(fmt, example, decoding) -> int:
    # The largest budget of any format, so a query's prompt does not depend on the other formats' budgets.
    return decoding.largest_new_tokens


register(
    "generate",
    Protocol(
        formats=frozenset(FORMATS),
        decodes=True,
        answer=answer,
        reserve=reserve,
        summary="the model writes its answer with the decoding strategy (every format)",
    ),
)

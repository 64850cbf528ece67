"""Batched generation: left padding, length-grouped batches, stop strings, per-batch timing."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from runner.data import Example
from runner.decoding import DECODINGS, DecodingSpec
from runner.draft_stats import count_generation
from runner.icl import Prompt
from runner.memory import peak_memory_bytes, reset_peak_memory

if TYPE_CHECKING:
    from runner.prefix_cache import PrefixCache


@dataclass(frozen=True)
class Query:
    """An evaluation example with its fitted prompt."""

    example: Example
    prompt: Prompt
    input_ids: list[int]

    @classmethod
    def unfitted(cls, fmt: Any, example: Example, shots: Sequence[Example] = ()) -> Query:
        """The query with exactly these shots, not fitted to a context (benchmarks, tests)."""
        prompt = fmt.prompt(example, shots)
        return cls(example, prompt, fmt.encode(prompt))


def query_columns(query: Query) -> dict[str, Any]:
    """The shard columns that say what was asked, whatever the protocol that answered."""
    example = query.example
    return {
        "id": example.id,
        "dataset": example.dataset,
        "format": example.format,
        "prompt": query.prompt.text,
        "prompt_sha256": prompt_hash(query.prompt.text),
        "shot_ids": list(query.prompt.shot_ids),
        "n_shots": len(query.prompt.shot_ids),
        "references": list(example.answers),
        "options": [text for _, text in example.options],
        "prompt_tokens": len(query.input_ids),
    }


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """The text before the earliest stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def prompt_hash(text: str) -> str:
    """sha256 of the exact prompt text, so identical prompts can be matched across runs."""
    return hashlib.sha256(text.encode()).hexdigest()


def length_batches(queries: Sequence[Query], batch_size: int, budget=lambda query: 0) -> list[list[Query]]:
    """Batches of queries with similar prompt lengths (longest first, stable for ties).

    Queries with different `budget` values (per-format max_new_tokens) never share a batch."""
    batches: list[list[Query]] = []
    for value in sorted({budget(q) for q in queries}):
        ordered = sorted((q for q in queries if budget(q) == value), key=lambda q: -len(q.input_ids))
        batches += [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
    return batches


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int, device: str):
    """Token id rows right-aligned in one tensor, with the attention mask that hides the padding."""
    import torch

    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, width - len(sequence):] = torch.tensor(list(sequence))
        mask[row, width - len(sequence):] = 1
    return ids.to(device), mask.to(device)


def _answer_tokens(new_tokens: list[int], eos_ids: set[int], pad_id: int) -> list[int]:
    for position, token in enumerate(new_tokens):
        if token in eos_ids:
            return new_tokens[:position]
    # A row that finished early (stop string) is padded while the rest of the batch runs on.
    while new_tokens and new_tokens[-1] == pad_id:
        new_tokens = new_tokens[:-1]
    return new_tokens


def tokens_through_stop(tokenizer: Any, tokens: list[int], stops: Sequence[str]) -> int:
    """How many tokens it took to produce the first stop string.

    Assisted strategies accept several tokens per step and can run past a stop string inside
    them; counting only up to it keeps token counts equal to plain greedy's for the same answer.
    """
    for count in range(1, len(tokens) + 1):
        if cut_at_stop(tokenizer.decode(tokens[:count], skip_special_tokens=True), stops)[1]:
            return count
    return len(tokens)


def _first_token_clock(device: str):
    """A logits processor that notes when the first token's logits exist: time to first token.

    It runs after the prefill forward pass, before any decoding step, and changes no scores.
    """
    import torch
    from transformers import LogitsProcessor

    class FirstTokenClock(LogitsProcessor):
        at: float | None = None

        def __call__(self, input_ids, scores):
            if self.at is None:
                if device == "cuda":
                    torch.cuda.synchronize()
                self.at = time.perf_counter()
            return scores

    return FirstTokenClock()


def _stop_criteria(tokenizer: Any, stops: Sequence[str]):
    """Stop-string criteria given to `generate` directly rather than as `stop_strings`.

    Assisted generation copies `stop_strings` into the draft model's own generate call, which has
    no tokenizer to match them with and fails; explicit criteria stay with the target model.
    """
    from transformers import StopStringCriteria, StoppingCriteriaList

    return StoppingCriteriaList([StopStringCriteria(tokenizer=tokenizer, stop_strings=list(stops))] if stops else [])


RETIRE_EVERY = 4
"""Decoding steps between checks for finished rows: short answers (yes/no, a letter) leave the
batch after a few steps instead of riding along until the longest answer ends."""


def _keep_cache_rows(cache: Any, rows: Any) -> None:
    """Keep only `rows` (a tensor of batch indices) in a preallocated cache, in place."""
    for layer in cache.layers:
        layer.keys = layer.keys.index_select(0, rows)
        layer.values = layer.values.index_select(0, rows)
        layer.batch_size = len(rows)


def _decode_retiring_finished_rows(model, ids, mask, limit: int, settings: dict[str, Any], processors, finished) -> list[list[int]]:
    """`generate` in spans of RETIRE_EVERY tokens; rows that finished leave between spans.

    The cache (in `settings`) holds every input token but the last, so each span continues
    exactly where the previous one stopped: the answers are those of one `generate` call.
    Processors that keep per-row state are told which rows stay (`select_rows`)."""
    import torch

    width = ids.shape[1]
    active = list(range(ids.shape[0]))
    generated: list[list[int]] = [[] for _ in active]
    while active and len(generated[active[0]]) < limit:
        span = min(RETIRE_EVERY, limit - len(generated[active[0]]))
        output = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=span, **settings)
        for position, row in enumerate(active):
            generated[row] = output[position, width:].tolist()
        keep = [position for position, row in enumerate(active) if not finished(generated[row])]
        if output.shape[1] - ids.shape[1] < span or not keep:
            break
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], output.shape[1] - ids.shape[1]))], dim=1)
        ids = output
        if len(keep) < len(active):
            index = torch.tensor(keep, device=ids.device)
            ids, mask = ids.index_select(0, index), mask.index_select(0, index)
            _keep_cache_rows(settings["cache"], index)
            for processor in processors:
                if hasattr(processor, "select_rows"):
                    processor.select_rows(keep)
            active = [active[position] for position in keep]
    return generated


def generate_batch(
    model: Any,
    tokenizer: Any,
    batch: Sequence[Query],
    spec: DecodingSpec,
    device: str,
    extra: dict[str, Any] | None = None,
    prefix_cache: PrefixCache | None = None,
) -> list[dict]:
    """Generate answers for one batch and return one prediction row per query.

    `extra` holds generate arguments built once per run (a speculative draft model);
    `prefix_cache`, kept for a run, computes the prompts' shared prefix once (dynamic cache only).
    """
    import torch
    from transformers import LogitsProcessorList

    eos = model.generation_config.eos_token_id if model.generation_config.eos_token_id is not None else tokenizer.eos_token_id
    eos_ids = set(eos) if isinstance(eos, (list, tuple)) else {eos}
    decoding = DECODINGS.get(spec.kind)
    kwargs = {**decoding.generate_kwargs(spec), **(extra or {})}
    if spec.cache == "static":
        kwargs.update(cache_implementation="static", disable_compile=not spec.compile)
    processors = decoding.logits_processors(spec, [q.example.id for q in batch])
    limit = spec.new_tokens_for(batch[0].example.format)
    reset_peak_memory(device)
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    clock = _first_token_clock(device)
    prefixed = None
    if prefix_cache is not None and spec.cache == "dynamic" and decoding.starts_from_prefix_cache:
        prefixed = prefix_cache.prepare([q.input_ids for q in batch], tokenizer.pad_token_id, limit)
    if prefixed is not None:
        ids, mask = prefixed.input_ids, prefixed.attention_mask
        # Sized per batch, so compiling it would recompile for every batch.
        kwargs.update(cache=prefixed.cache, disable_compile=True)
    else:
        ids, mask = left_pad([q.input_ids for q in batch], tokenizer.pad_token_id, device)
    settings = dict(
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=sorted(eos_ids),
        stopping_criteria=_stop_criteria(tokenizer, spec.stop),
        logits_processor=LogitsProcessorList([clock, *processors]),
        # Settings from the model's generation_config (top_p, temperature) must not leak in.
        temperature=None,
        top_p=None,
        top_k=None,
        **kwargs,
    )
    def finished(tokens: list[int]) -> bool:
        return any(t in eos_ids for t in tokens) or cut_at_stop(tokenizer.decode(tokens, skip_special_tokens=True), spec.stop)[1]

    with torch.inference_mode(), count_generation(model) as counts:
        if prefixed is not None and len(batch) > 1:
            generated = _decode_retiring_finished_rows(model, ids, mask, limit, settings, processors, finished)
        else:
            output = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=limit, **settings)
            generated = output[:, ids.shape[1]:].tolist()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    first_token = (clock.at - started) if clock.at is not None else None
    peak = peak_memory_bytes(device)
    rows = []
    for row, query in enumerate(batch):
        new_tokens = _answer_tokens(generated[row], eos_ids, tokenizer.pad_token_id)
        text = tokenizer.decode(new_tokens, skip_special_tokens=True)
        answer, stopped = cut_at_stop(text, spec.stop)
        if stopped:
            new_tokens = new_tokens[: tokens_through_stop(tokenizer, new_tokens, spec.stop)]
            text = tokenizer.decode(new_tokens, skip_special_tokens=True)
        rows.append(
            {
                **query_columns(query),
                "prediction": answer.strip(),
                "raw_output": text,
                "output_tokens": len(new_tokens),
                "stopped": stopped or len(new_tokens) < limit,
                "batch_size": len(batch),
                "batch_seconds": seconds,
                "batch_first_token_seconds": first_token,
                "batch_peak_memory_bytes": peak,
                "batch_output_tokens": 0,
                "batch_target_forwards": counts.target_forwards,
                # Assisted strategies run one prompt per batch, so the batch's tallies are the row's.
                "draft_proposed_tokens": counts.proposed,
                "draft_accepted_tokens": counts.accepted,
            }
        )
    generated = sum(r["output_tokens"] for r in rows)
    for r in rows:
        r["batch_output_tokens"] = generated
    return rows

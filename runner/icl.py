"""Prompts: instruction, k shots from the train split, and the query — the same for training and
inference, so a fine-tuned model is asked exactly what it was taught to answer."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

from runner.data import Example
from runner.manifest import IclSpec


@dataclass(frozen=True)
class Prompt:
    """The exact prompt text for one query and the ids of the shots inside it."""

    text: str
    shot_ids: tuple[str, ...]
    add_special_tokens: bool
    """False when a chat template already wrote the BOS token into the text."""


def render_example(example: Example, template: str) -> str:
    """One example laid out by the manifest template, without its answer."""
    options = " ".join(f"({letter}) {text}" for letter, text in example.options)
    return template.format(
        question=example.question,
        options=f"{options}\n" if options else "",
        context=f"{example.context}\n" if example.context else "",
    )


def answer_label(example: Example) -> str:
    """What `balanced` balances: the yes/no answer, or the position of the correct option."""
    answer = example.answers[0].strip().lower()
    if example.format == "multiple_choice":
        for letter, text in example.options:
            if text.strip().lower() == answer:
                return letter
    return answer if example.format == "yes_no" else ""


def select_shots(
    query: Example, pool: Sequence[Example], k: int, rng: random.Random, strategy: str = "random"
) -> list[Example]:
    """k training examples drawn without replacement, never the query itself or its exact question."""
    if k == 0:
        return []
    eligible = [e for e in pool if e.id != query.id and e.input != query.input]
    if strategy == "per_dataset":
        eligible = [e for e in eligible if e.dataset == query.dataset]
    if strategy != "balanced":
        return rng.sample(eligible, min(k, len(eligible)))
    by_label: dict[str, list[Example]] = {}
    for example in eligible:
        by_label.setdefault(answer_label(example), []).append(example)
    for examples in by_label.values():
        rng.shuffle(examples)
    labels = sorted(by_label)
    rng.shuffle(labels)
    shots: list[Example] = []
    # Round-robin over labels: k=4 on yes/no gives two of each; order within is then shuffled.
    while len(shots) < k and any(by_label.values()):
        for label in labels:
            if by_label[label] and len(shots) < k:
                shots.append(by_label[label].pop())
    rng.shuffle(shots)
    return shots


class PromptFormat:
    """Turns examples into prompt and completion text for one tokenizer and ICL setup."""

    def __init__(self, tokenizer: Any, spec: IclSpec, style: str = "plain"):
        """`style` is the requested format (runner.prompt_style); `chat` needs the tokenizer's template."""
        self.tokenizer = tokenizer
        self.spec = spec
        self.chat = style == "chat" and bool(getattr(tokenizer, "chat_template", None))

    @property
    def style(self) -> str:
        """The format prompts really get: `chat` or `plain` (recorded with every prediction)."""
        return "chat" if self.chat else "plain"

    def _body(self, query: Example, shots: Sequence[Example]) -> str:
        blocks = [self.spec.instruction] if self.spec.instruction else []
        blocks += [f"{render_example(s, self.spec.example_template)} {s.answers[0]}" for s in shots]
        blocks.append(render_example(query, self.spec.example_template))
        return "\n\n".join(blocks)

    def _messages(self, body: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": body}]

    def prompt(self, query: Example, shots: Sequence[Example] = ()) -> Prompt:
        """The prompt for a query with the given shots."""
        body = self._body(query, shots)
        ids = tuple(s.id for s in shots)
        if self.chat:
            text = self.tokenizer.apply_chat_template(self._messages(body), tokenize=False, add_generation_prompt=True)
            return Prompt(text, ids, add_special_tokens=False)
        return Prompt(body, ids, add_special_tokens=True)

    def completion(self, prompt: Prompt, answer: str) -> str:
        """Text the model should produce after the prompt, ending the way generation stops."""
        if not self.chat:
            return f" {answer}{self.tokenizer.eos_token}"
        # The template's own end-of-turn markup: render the full exchange and cut the prompt off.
        full = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": "\x00"}, {"role": "assistant", "content": answer}], tokenize=False
        )
        head = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": "\x00"}], tokenize=False, add_generation_prompt=True
        )
        if full.startswith(head):
            return full[len(head):]
        return f"{answer}{self.tokenizer.eos_token}"

    def encode(self, prompt: Prompt) -> list[int]:
        """Token ids of the prompt, with BOS exactly once."""
        return self.tokenizer(prompt.text, add_special_tokens=prompt.add_special_tokens)["input_ids"]

    def fit(self, query: Example, shots: Sequence[Example], budget: int) -> tuple[Prompt, list[int]]:
        """Drop shots from the end until the prompt fits `budget` tokens; never drop the query."""
        shots = list(shots)
        while True:
            prompt = self.prompt(query, shots)
            ids = self.encode(prompt)
            if len(ids) <= budget or not shots:
                return prompt, ids
            shots.pop()


def shot_rng(seed: int, query: Example, same_for_all: bool = False) -> random.Random:
    """A generator private to one query (its shots do not depend on the order queries run in),
    or one shared by every query when the same shots serve all of them."""
    return random.Random(str(seed) if same_for_all else f"{seed}:{query.id}")

"""Plain prompts or the chat template: decided per model before any file is read.

Base checkpoints continue text; instruction-tuned ones expect their chat markup. Some base
tokenizers ship a chat template anyway (Gemma's) and some do not (Llama 2's), so "wrap whenever
the tokenizer has a template" would give one grid two prompt formats by model family. `auto`
therefore uses the chat template only for instruction-tuned models: declared in the model block
(`instruction_tuned`), else read from the model's name, which for every family in the grid says
so (-it, -Instruct, -chat).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from runner.manifest import Manifest
    from runner.model_spec import ModelSpec

PromptStyle = Literal["chat", "plain"]

# A name part that marks chat/instruction tuning: gemma-2b-it, Mistral-7B-Instruct-v0.2,
# Llama-2-7b-chat-hf, SmolLM2-135M-Instruct, zephyr-7b-sft, ...
_TUNED = re.compile(r"(?:^|[-_./])(it|instruct|chat|sft|dpo|rlhf)(?:$|[-_./v0-9])", re.IGNORECASE)


def detected_instruction_tuned(model: ModelSpec) -> bool:
    """Whether the model's name marks an instruction-tuned checkpoint (packaged models say so themselves)."""
    from runner.models import PACKAGED_MODELS

    if model.package is not None:
        return PACKAGED_MODELS[model.package].instruction_tuned
    name = model.hub or model.path or ""
    return any(_TUNED.search(part) for part in name.split("/") if part)


def instruction_tuned(model: ModelSpec) -> bool:
    """Declared in the model block, or detected from the name."""
    return model.instruction_tuned if model.instruction_tuned is not None else detected_instruction_tuned(model)


def requested_style(manifest: Manifest) -> PromptStyle:
    """The prompt format a manifest asks for; the tokenizer must also have a template for `chat`."""
    rule = manifest.icl.chat_template
    if rule == "always":
        return "chat"
    if rule == "never":
        return "plain"
    return "chat" if instruction_tuned(manifest.model) else "plain"


def describe(manifest: Manifest) -> str:
    """One line for `runner validate`: the format and why."""
    style, model = requested_style(manifest), manifest.model
    if manifest.icl.chat_template != "auto":
        reason = f"icl.chat_template: {manifest.icl.chat_template}"
    elif model.instruction_tuned is not None:
        reason = f"model.instruction_tuned: {str(model.instruction_tuned).lower()}"
    elif model.package is not None:
        reason = f"packaged {model.package} is " + ("instruction-tuned" if style == "chat" else "a base model")
    else:
        reason = ("instruction-tuned" if style == "chat" else "base model") + " by its name"
    suffix = " (the tokenizer's chat template; plain if it has none)" if style == "chat" else ""
    return f"{style} prompts{suffix}: {reason}"

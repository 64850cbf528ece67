"""`prompt_tuning`: trained embeddings of virtual tokens put before every prompt (Lester et al. 2021), via peft."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from runner import memory_plan as mp
from runner.methods import Method, MethodContext, register
from runner.spec import Spec


INIT_TEXT = "Answer the question with a short answer."


class PromptTuningSpec(Spec):
    """Prompt tuning: num_virtual_tokens embeddings are prepended to the input and trained; the model
    itself stays frozen."""

    kind: Literal["prompt_tuning"] = "prompt_tuning"
    num_virtual_tokens: int = Field(20, ge=1, le=512)
    """Trained embeddings prepended to every input; they take room in the context window."""
    init: Literal["text", "random"] = "text"
    """`text` starts from the embeddings of init_text's tokens (repeated or cut to fit), `random` from
    random vectors."""
    init_text: str = INIT_TEXT
    """Text whose token embeddings initialise the virtual tokens when init is `text`."""

    @field_validator("init_text")
    @classmethod
    def _text_for_text_init(cls, value: str, info: ValidationInfo) -> str:
        # Runs only for a value written in the manifest, so a resolved manifest stays valid.
        if info.data.get("init") == "text" and not value.strip():
            raise ValueError("must not be empty when init is text")
        if info.data.get("init") == "random" and value != INIT_TEXT:
            raise ValueError("is used only with init: text; init: random would ignore it")
        return value


def _text_init_ids(tokenizer: Any, text: str, count: int) -> list[int]:
    """Token ids of the text, repeated then cut to exactly `count` (peft's rule), without BOS."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return (ids * (count // len(ids) + 1))[:count]


def _generation_inputs(peft_model: Any):
    """A prepare_inputs_for_generation that puts the virtual tokens in front once, at prefill.

    peft 0.21's own version looks for `past_key_values`, which transformers 5 renamed `cache`, so it
    never sees the cache and prepends the virtual tokens again at every decoding step. It also drops
    position ids, so left padding would shift the real tokens away from the virtual ones; here real
    tokens keep the positions they had in training (after the virtual ones, not counting padding).

    Callers that count the cache as real tokens are corrected here. A prompt-tuned speculative
    draft is the case: transformers crops the draft's cache to `len(input_ids) - 2` entries between
    rounds, virtual ones included, so V real tokens are dropped, and then feeds only
    `len(input_ids) - cache length` tokens; the draft would propose from a context missing V tokens.
    The tokens fed are always those not yet in the cache: len(input_ids) − (cache length − V).
    """
    import torch

    base_prepare = peft_model.base_model_prepare_inputs_for_generation

    def prepare(input_ids, *args, **kwargs):
        virtual = peft_model.active_peft_config.num_virtual_tokens
        cache = kwargs.get("cache")
        cached = cache.get_seq_length() if cache is not None else 0
        if cached and kwargs.get("next_sequence_length") is not None:
            if cached < virtual:
                # Cropped into the virtual tokens (a prompt shorter than V + 2): start again from them.
                cache.crop(-cached)
                kwargs["next_sequence_length"] = None
            else:
                kwargs["next_sequence_length"] = input_ids.shape[1] - (cached - virtual)
        inputs = base_prepare(input_ids, *args, **kwargs)
        ids, mask, positions = inputs["input_ids"], inputs.get("attention_mask"), inputs.get("position_ids")
        if mask is not None:
            inputs["attention_mask"] = torch.cat((mask.new_ones(mask.shape[0], virtual), mask), dim=1)
        cache = inputs.get("cache")
        prefill = cache is None or cache.get_seq_length() == 0
        if prefill:
            embeds = peft_model.word_embeddings(ids)
            prompts = peft_model.get_prompt(batch_size=ids.shape[0]).to(embeds.dtype)
            inputs["inputs_embeds"] = torch.cat((prompts, embeds), dim=1)
            inputs["input_ids"] = None
        # Without position ids (no padding) the model counts from the cache, virtual tokens included.
        if positions is not None:
            positions = positions + virtual
            if prefill:
                head = torch.arange(virtual, device=positions.device, dtype=positions.dtype).expand(positions.shape[0], -1)
                positions = torch.cat((head, positions), dim=1)
            inputs["position_ids"] = positions
        return inputs

    return prepare


def apply(model: Any, spec: PromptTuningSpec, context: MethodContext) -> Any:
    """Wrap the model in a peft prompt-tuning model with only the virtual token embeddings trainable."""
    import torch
    from peft import PromptTuningConfig, PromptTuningInit, get_peft_model

    # peft's TEXT init reloads a tokenizer by name (network for a hub id, no pinned revision); the
    # run's own tokenizer is already here, so the model is built with random vectors and the text
    # embeddings are copied in below. The saved config still records the text init.
    config = PromptTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=spec.num_virtual_tokens,
        prompt_tuning_init=PromptTuningInit.RANDOM,
    )
    peft_model = get_peft_model(model, config)
    if spec.init == "text":
        ids = _text_init_ids(context.tokenizer, spec.init_text, spec.num_virtual_tokens)
        embeddings = model.get_input_embeddings()
        prompt = peft_model.prompt_encoder[peft_model.active_adapter].embedding
        with torch.no_grad():
            vectors = embeddings(torch.tensor(ids, device=embeddings.weight.device))
            prompt.weight.copy_(vectors.to(prompt.weight.dtype))
        config.prompt_tuning_init = PromptTuningInit.TEXT
        config.prompt_tuning_init_text = spec.init_text
        config.tokenizer_name_or_path = context.tokenizer.name_or_path
    peft_model.prepare_inputs_for_generation = _generation_inputs(peft_model)
    return peft_model


def load_trained(model: Any, folder: Path, spec: PromptTuningSpec) -> Any:
    """The saved virtual tokens in front of the base model, ready for cached, left-padded generation."""
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(model, str(folder))
    peft_model.prepare_inputs_for_generation = _generation_inputs(peft_model)
    return peft_model


def prompt_overhead(spec: PromptTuningSpec) -> int:
    """The virtual tokens occupy context positions in front of every prompt."""
    return spec.num_virtual_tokens


def memory(spec: Any, shape: mp.ModelShape, e: int, autocast: bool) -> mp.Adaptation:
    """What this method adds to a model's memory, for `runner plan --gpu-memory` (runner/memory_plan.py)."""
    n = spec.num_virtual_tokens
    return mp.Adaptation((n * shape.hidden,), 4, extra_tokens=n, eval_adapter=n * shape.hidden * 4)


register(
    "prompt_tuning",
    Method(
        spec=PromptTuningSpec,
        apply=apply,
        trains=True,
        load_trained=load_trained,
        prompt_overhead=prompt_overhead,
        # peft's forward puts the virtual tokens in front of every input it is given: a prompt run in
        # two pieces (the batch's shared prefix, then each row's remainder) would get them twice.
        shares_prompt_prefix=False,
        memory=memory,
    ),
)

"""Tiny random Llama, Gemma and Mistral models with a locally trained tokenizer, for CPU tests."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

SPECIAL = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 600):
    """A byte-level BPE tokenizer (no unknown tokens) that prepends BOS like Llama's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    bos = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, padding_side="left", **SPECIAL)


def tiny_config(family: str, tokenizer):
    """A two-layer config of the family, sized for millisecond forward passes."""
    from transformers import GemmaConfig, LlamaConfig, MistralConfig

    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        # Wider than the usual 0.02 so the random output head can express peaked distributions
        # (logit std ≈ 0.1·sqrt(64) ≈ 0.8): adapters then learn visibly within a CPU test's steps.
        initializer_range=0.1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    if family == "llama":
        return LlamaConfig(**common)
    if family == "gemma":
        return GemmaConfig(head_dim=16, **common)
    if family == "mistral":
        return MistralConfig(sliding_window=256, **common)
    raise ValueError(family)


def save_tiny_model(folder: Path, family: str, corpus: Iterable[str], seed: int = 0) -> Path:
    """Build, seed and save a tiny model plus tokenizer into `folder`."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = train_tokenizer(corpus)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, tokenizer))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder

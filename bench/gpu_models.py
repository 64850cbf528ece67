"""Random-weight models with published shapes, a tokenizer for them and prompts, for bench/gpu_bench.py.

No download: each model is built from a config carrying the shape of the published checkpoint,
so the weights are random but every matrix multiply has its real size. `--tiny` shapes keep the
architecture and shrink every dimension, so the whole benchmark runs on a CPU in minutes.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any

# Special token ids shared by every shape (Gemma's own ids: pad 0, eos 1, bos 2, unk 3).
PAD, EOS, BOS, UNK = 0, 1, 2, 3


@dataclass(frozen=True)
class Shape:
    """One architecture at one size."""

    name: str
    family: str
    """gemma or llama: the transformers config class."""
    config: dict[str, Any]


SHAPES = {
    # google/gemma-2b config.json: 2.51 B parameters, the 256k embedding tied to the output head.
    "gemma-2b": Shape("gemma-2b", "gemma", dict(
        vocab_size=256000, hidden_size=2048, intermediate_size=16384, num_hidden_layers=18, num_attention_heads=8,
        num_key_value_heads=1, head_dim=256, max_position_embeddings=8192, rms_norm_eps=1e-6, rope_theta=10000.0,
        hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True,
    )),
    # meta-llama/Llama-2-7b-hf config.json: 6.74 B parameters, untied output head.
    "llama-2-7b": Shape("llama-2-7b", "llama", dict(
        vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=False,
    )),
}

# The same architectures shrunk for a CPU dry run: every code path, none of the cost.
TINY = {
    "gemma-2b": dict(vocab_size=2048, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=1, head_dim=16),
    "llama-2-7b": dict(vocab_size=2048, hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=4),
}


def shape(name: str, tiny: bool) -> Shape:
    """The named shape, or its tiny twin."""
    full = SHAPES[name]
    if not tiny:
        return full
    return dataclasses.replace(full, name=f"{name} (tiny)", config={**full.config, **TINY[name]})


def build_config(spec: Shape):
    """The transformers config for a shape, with the token ids of `id_tokenizer`."""
    from transformers import GemmaConfig, LlamaConfig

    config_class = {"gemma": GemmaConfig, "llama": LlamaConfig}[spec.family]
    return config_class(**spec.config, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=BOS)


def build_model(spec: Shape, device: str, dtype: Any, seed: int = 0):
    """A random-weight model of this shape, initialised directly on `device` in `dtype`."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    # Created on the device: initialising 7 B parameters on the host and copying them takes minutes.
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(build_config(spec), dtype=dtype)
    return model.to(device).eval()


def build_quantized(spec: Shape, device: str, dtype: Any, load_kwargs: dict[str, Any], seed: int = 0):
    """A random-weight model loaded through `from_pretrained` with a method's load arguments.

    QLoRA's base is quantized while loading; the random weights are handed over as a state dict,
    so the model goes through the same quantizer a checkpoint from the hub would.
    """
    import torch

    skeleton = build_model(spec, device, dtype, seed)
    model_class, state = type(skeleton), skeleton.state_dict()
    del skeleton  # its tensors live on in `state` until the quantized copies exist
    # The concrete class: AutoModelForCausalLM.from_pretrained insists on a name or folder.
    model = model_class.from_pretrained(
        None, config=build_config(spec), state_dict=state, dtype=dtype, device_map={"": device}, **load_kwargs
    )
    del state
    if device == "cuda":
        torch.cuda.empty_cache()
    return model


def id_tokenizer(vocab_size: int):
    """A word-level tokenizer whose words are token ids ("t1234"): any id sequence has a text."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special = {"<pad>": PAD, "</s>": EOS, "<s>": BOS, "<unk>": UNK}
    vocab = {**special, **{f"t{i}": i for i in range(len(special), vocab_size)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", bos_token="<s>",
                                   unk_token="<unk>", padding_side="left")


def example(index: int, context: str = "", answer: str = "t10"):
    """A runner Example with a given context (the prompt's bulk) and answer."""
    from runner.data import Example

    return Example(id=f"bench/dev/{index}", dataset="synthetic_abstractive", split="dev", format="abstractive",
                   input=f"question {index}", question=f"question {index}", options=(), context=context,
                   answers=(answer,), line=index + 1)


def queries(count: int, vocab_size: int, shortest: int, longest: int, seed: int):
    """`count` generation queries of random token ids, lengths drawn uniformly in [shortest, longest]."""
    from runner.generate import Query
    from runner.icl import Prompt

    rng = random.Random(f"queries:{seed}")  # local, so the prompts do not depend on anything else run
    out = []
    for index in range(count):
        ids = [BOS] + [rng.randrange(UNK + 1, vocab_size) for _ in range(rng.randint(shortest, longest) - 1)]
        text = " ".join(f"t{i}" for i in ids[1:])
        out.append(Query(example(index, text), Prompt(text, (), add_special_tokens=True), ids))
    return out


def training_examples(count: int, vocab_size: int, words: int, seed: int):
    """`count` examples whose prompts exceed `words` tokens, so training truncates every one to max length."""
    rng = random.Random(f"train:{seed}")
    return [
        example(index, " ".join(f"t{rng.randrange(UNK + 1, vocab_size)}" for _ in range(words)),
                answer=" ".join(f"t{rng.randrange(UNK + 1, vocab_size)}" for _ in range(8)))
        for index in range(count)
    ]


def weight_bytes(model: Any) -> int:
    """Bytes of every distinct parameter and buffer tensor: what one decoder step at batch 1 reads
    (a tied embedding counted once, as the output head reads it whole)."""
    seen, total = set(), 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        total += tensor.numel() * tensor.element_size()
    return total

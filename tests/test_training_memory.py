"""Training under memory pressure: out-of-memory back-off, gradient checkpointing, optimizers, master weights.

CPU has no CUDA allocator to exhaust, so the out-of-memory error is raised by a hook in this
process: layer 0's attention raises `torch.OutOfMemoryError` (the CUDA error type) in its forward
or, through a gradient hook, in the middle of the backward pass, whenever a training pass holds
more rows than a limit.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import SYNTHETIC, stage_folders, write_manifest
from runner.cli import main

# Float32 on CPU, no dropout: a chunked micro-batch differs from a whole one only in float
# summation order. Measured (torch 2.13, CPU): logged losses, entropies and token accuracies
# within 1.4e-7 relative, adapter weights within 1.3e-7 absolute (the adapter files do differ);
# with checkpointing on or off, identical. The bounds leave about an order of magnitude.
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 1e-6
LORA = {"kind": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}
# 4 train examples of each of the 4 datasets = 16; 4 rows per micro-batch, 2 micro-batches per step.
TRAIN = {"steps": 4, "batch_size": 4, "gradient_accumulation_steps": 2, "learning_rate": 1e-2, "save_steps": 2, "logging_steps": 1, "heldout_examples": 0}


def _manifest(folder: Path, small_data: Path, tiny_models: dict[str, Path], name: str, method: dict = LORA, **train) -> Path:
    return write_manifest(
        folder,
        name,
        model={"path": str(tiny_models["llama"]), "dtype": "float32"},
        data={"root": str(small_data), "datasets": SYNTHETIC, "max_train_examples": 4, "max_eval_examples": 1},
        method=method,
        train={**TRAIN, **train},
        decoding={"kind": "greedy", "max_new_tokens": 4, "batch_size": 4},
        eval={"shard_size": 4},
    )


class OutOfMemoryHook:
    """Layer 0's attention runs out of memory on training passes of more than `rows` rows.

    From the `start`-th training pass on (each micro-batch or chunk is one pass); `where` is
    "forward" (before the layer computes) or "backward" (while the gradient flows back through
    it, after the layers above have added theirs to `.grad`). `stop_at`: after that many passes,
    ask the run to stop as SIGTERM would (it saves a checkpoint at the step's end, exit 143).
    """

    def __init__(self, monkeypatch, rows: int, start: int = 1, where: str = "forward", stop_at: int | None = None):
        import torch
        from transformers.models.llama import modeling_llama

        from runner import preemption

        self.passes = 0
        self.raised = 0
        original = modeling_llama.LlamaAttention.forward

        def out_of_memory(*args):
            self.raised += 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB (raised by the test)")

        def forward(module, hidden_states, *args, **kwargs):
            training = module.layer_idx == 0 and module.training and torch.is_grad_enabled()
            if training:
                self.passes += 1
                if stop_at is not None and self.passes == stop_at:
                    preemption._requested.set()
            fails = training and self.passes >= start and hidden_states.shape[0] > rows
            if fails and where == "forward":
                out_of_memory()
            output = original(module, hidden_states, *args, **kwargs)
            if fails and where == "backward":
                output[0].register_hook(out_of_memory)
            return output

        monkeypatch.setattr(modeling_llama.LlamaAttention, "forward", forward)


def _run(manifest: Path, storage: Path) -> dict:
    """Run the manifest; what its training produced."""
    from safetensors.torch import load_file

    assert main(["run", str(manifest), "--storage", str(storage)]) == 0
    evaluation, training = stage_folders(manifest, storage)
    return {
        "train": json.loads((evaluation / "metrics.json").read_text())["train"],
        "log": [json.loads(line) for line in (training / "train_log.jsonl").read_text().splitlines()],
        "weights": load_file(str(training / "adapter" / "adapter_model.safetensors")),
        "adapter_bytes": (training / "adapter" / "adapter_model.safetensors").read_bytes(),
    }


def _assert_same_training(constrained: dict, free: dict) -> None:
    """Same steps, same tokens per step, losses and weights equal within the float tolerances."""
    import torch

    pairs = list(zip(constrained["log"], free["log"], strict=True))
    for ours, theirs in pairs:
        assert ours["step"] == theirs["step"] and ours.get("num_tokens") == theirs.get("num_tokens"), "same examples in every step"
        for key in ("loss", "mean_token_accuracy", "entropy"):
            if key in theirs:
                assert ours[key] == pytest.approx(theirs[key], rel=LOSS_RTOL), (ours["step"], key)
    assert constrained["train"]["final_loss"] == pytest.approx(free["train"]["final_loss"], rel=LOSS_RTOL)
    assert constrained["weights"].keys() == free["weights"].keys()
    for name, tensor in free["weights"].items():
        torch.testing.assert_close(constrained["weights"][name], tensor, rtol=0, atol=WEIGHT_ATOL, msg=name)


@pytest.fixture(scope="module")
def unconstrained(tmp_path_factory, small_data, tiny_models) -> dict:
    folder = tmp_path_factory.mktemp("unconstrained")
    return _run(_manifest(folder, small_data, tiny_models, "memory"), folder / "storage")


@pytest.mark.parametrize("where", ["forward", "backward"])
def test_out_of_memory_halves_the_micro_batch_and_trains_as_if_it_fit(where, unconstrained, small_data, tiny_models, tmp_path, monkeypatch, capsys):
    # Pass 4 is step 2's second micro-batch: a backward failure there leaves part of its gradient
    # in .grad on top of the first micro-batch's, and the whole window must be redone.
    hook = OutOfMemoryHook(monkeypatch, rows=2, start=4, where=where)
    constrained = _run(_manifest(tmp_path, small_data, tiny_models, "memory"), tmp_path / "storage")
    assert hook.raised == 1, "one failure, then every pass fits"
    assert constrained["train"]["oom_backoffs"] == [{"step": 2, "micro_batch": 2}]
    assert constrained["train"]["micro_batch"] == 2 and unconstrained["train"]["micro_batch"] == 4
    assert unconstrained["train"]["oom_backoffs"] == []
    assert constrained["train"]["steps"] == unconstrained["train"]["steps"] == 4
    assert constrained["train"]["padded_tokens"] == unconstrained["train"]["padded_tokens"], "the trainer saw the same micro-batches"
    _assert_same_training(constrained, unconstrained)
    assert "out of memory at step 2 with 4 rows per forward pass; continuing with 2" in capsys.readouterr().out


def test_out_of_memory_on_a_single_example_exits_2_with_advice_and_writes_nothing(small_data, tiny_models, tmp_path, monkeypatch, capsys):
    OutOfMemoryHook(monkeypatch, rows=0, start=3, where="backward")
    manifest = _manifest(tmp_path, small_data, tiny_models, "never-fits")
    storage = tmp_path / "storage"
    assert main(["run", str(manifest), "--storage", str(storage)]) == 2
    out, err = capsys.readouterr()
    assert "continuing with 2" in out and "continuing with 1" in out, "halved down to one row first"
    assert "Traceback" not in out + err
    assert f"{manifest}: train: out of memory at step 2 even one example at a time" in err
    for advice in ("train.gradient_checkpointing: true", "train.optimizer: adamw_8bit", "train.max_seq_length", "method.kind: lora or qlora", f"python -m runner plan {manifest} --gpu-memory GB"):
        assert advice in err, advice
    evaluation, training = stage_folders(manifest, storage)
    assert not (training / "_SUCCESS").exists() and not (training / "adapter").exists()
    assert not evaluation.exists() or not {"metrics.json", "_SUCCESS"} & {p.name for p in evaluation.iterdir()}


def test_run_resumed_after_a_back_off_keeps_the_smaller_micro_batch_and_ends_byte_identical(small_data, tiny_models, tmp_path, monkeypatch):
    reference_hook = OutOfMemoryHook(monkeypatch, rows=2, start=3)
    reference = _run(_manifest(tmp_path / "a", small_data, tiny_models, "resumed"), tmp_path / "a" / "storage")
    assert reference_hook.raised == 1
    monkeypatch.undo()

    # Pass 3 (step 2's first micro-batch) fails; step 2 then runs as passes 4-7 of 2 rows and step
    # 3 as passes 8-11, and the stop requested in pass 11 saves checkpoint-3 at the step's end.
    manifest = _manifest(tmp_path / "b", small_data, tiny_models, "resumed")
    storage = tmp_path / "b" / "storage"
    OutOfMemoryHook(monkeypatch, rows=2, start=3, stop_at=11)
    assert main(["run", str(manifest), "--storage", str(storage)]) == 143
    monkeypatch.undo()
    checkpoint = stage_folders(manifest, storage)[1] / "checkpoints" / "checkpoint-3"
    assert json.loads((checkpoint / "qabench_micro_batch.json").read_text()) == {"micro_batch": 2, "oom_backoffs": [{"step": 2, "micro_batch": 2}]}

    # The rerun has all the memory it wants, yet splits as the checkpoint says.
    resumed = _run(manifest, storage)
    assert resumed["train"]["micro_batch"] == 2 and resumed["train"]["oom_backoffs"] == reference["train"]["oom_backoffs"]
    assert resumed["adapter_bytes"] == reference["adapter_bytes"]
    assert resumed["log"] == reference["log"]


def test_data_parallel_training_does_not_split_a_rank_alone():
    import torch

    from runner.train_memory import MicroBatches

    class State:
        global_step = 0

    class Trainer:
        state = State()
        _metrics = {"train": {}}
        _total_train_tokens = 0

    def forward_backward(model, chunk):
        raise torch.OutOfMemoryError("CUDA out of memory (test)")

    batches = MicroBatches(4, can_split=False)
    inputs = {"input_ids": torch.zeros(4, 3, dtype=torch.long)}
    with pytest.raises(torch.OutOfMemoryError):
        batches.training_step(Trainer(), torch.nn.Linear(1, 1), inputs, torch.tensor(4), forward_backward)
    assert batches.size == 4 and batches.backoffs == []


def test_split_rows_cuts_each_chunk_to_its_longest_row():
    import torch

    from runner.train_memory import split_rows

    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0]])
    batch = {"input_ids": torch.arange(16).view(4, 4), "attention_mask": mask, "labels": torch.full((4, 4), -100), "scalar": 7}
    first, second = split_rows(batch, 2)
    assert first["input_ids"].shape == (2, 4) and second["input_ids"].shape == (2, 3)
    assert second["input_ids"].tolist() == [[8, 9, 10], [12, 13, 14]] and second["scalar"] == 7
    assert [len(c["input_ids"]) for c in split_rows(batch, 3)] == [3, 1]


# --- gradient checkpointing ---------------------------------------------------------------------

CHECKPOINTED = {
    "lora": LORA,
    "prompt_tuning": {"kind": "prompt_tuning", "num_virtual_tokens": 4, "init": "random"},
    "full": {"kind": "full"},
}


@pytest.mark.parametrize("kind", sorted(CHECKPOINTED))
def test_gradient_checkpointing_recomputes_layers_and_trains_the_same_weights(kind, small_data, tiny_models, tmp_path, monkeypatch):
    """With the base frozen (LoRA, prompt tuning) nothing below the adapters needs a gradient;
    checkpointing must still pass one through every recomputed layer to the trained weights."""
    import torch
    from transformers.models.llama import modeling_llama

    learning_rate = 1e-1 if kind == "prompt_tuning" else 1e-2
    runs = {}
    for checkpointing in (False, True):
        passes = []
        original = modeling_llama.LlamaMLP.forward

        def counted(module, *args, **kwargs):
            passes.append(module.training and torch.is_grad_enabled())
            return original(module, *args, **kwargs)

        monkeypatch.setattr(modeling_llama.LlamaMLP, "forward", counted)
        train = {"steps": 2, "gradient_checkpointing": checkpointing, "learning_rate": learning_rate}
        manifest = _manifest(tmp_path / str(checkpointing), small_data, tiny_models, f"checkpointing-{kind}", CHECKPOINTED[kind], **train)
        storage = tmp_path / str(checkpointing) / "storage"
        assert main(["run", str(manifest), "--storage", str(storage)]) == 0
        monkeypatch.undo()
        training = stage_folders(manifest, storage)[1]
        weights = {}
        for file in sorted((training / "adapter").glob("*.safetensors")):
            from safetensors.torch import load_file

            weights.update(load_file(str(file)))
        log = [json.loads(line) for line in (training / "train_log.jsonl").read_text().splitlines()]
        records = [r for r in log if "loss" in r]
        runs[checkpointing] = {"training_passes": sum(passes), "weights": weights, "losses": [r["loss"] for r in records], "grad_norms": [r["grad_norm"] for r in records]}

    # 2 steps × 2 micro-batches × 2 layers; checkpointing runs each layer again in the backward pass.
    assert runs[False]["training_passes"] == 8 and runs[True]["training_passes"] == 16
    assert runs[True]["losses"] == pytest.approx(runs[False]["losses"], rel=LOSS_RTOL)
    assert runs[True]["grad_norms"] == pytest.approx(runs[False]["grad_norms"], rel=LOSS_RTOL)
    assert min(runs[True]["grad_norms"]) > 0, "a gradient reached the trained weights through the recomputed layers"
    if kind == "lora":  # B starts at zero: any nonzero entry was trained
        assert all(t.abs().max() > 0 for n, t in runs[True]["weights"].items() if "lora_B" in n)
    for name, tensor in runs[False]["weights"].items():
        torch.testing.assert_close(runs[True]["weights"][name], tensor, rtol=0, atol=WEIGHT_ATOL, msg=name)


# --- optimizers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["adamw_torch", "adamw_torch_fused", "adamw_8bit", "paged_adamw_8bit", "sgd"])
def test_every_optimizer_takes_a_step_on_cpu(name):
    """One step through the trainer's own optimizer factory: finite loss, weights moved, and the
    8-bit variants really keep 8-bit state (bitsandbytes does so from 4,096 elements up)."""
    import torch
    from transformers import Trainer, TrainingArguments

    from runner.train import OPTIMIZERS, optimizer_on

    used = optimizer_on(name, "cpu")
    args = TrainingArguments(output_dir="unused", optim=OPTIMIZERS[used], learning_rate=1e-2, use_cpu=True, report_to="none")
    torch.manual_seed(0)
    layer = torch.nn.Linear(128, 128)
    before = layer.weight.detach().clone()
    optimizer_class, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, layer)
    optimizer = optimizer_class(layer.parameters(), **kwargs)
    loss = layer(torch.randn(8, 128, generator=torch.Generator().manual_seed(1))).pow(2).mean()
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and (layer.weight - before).abs().max() > 1e-4
    state = optimizer.state[layer.weight]
    if "8bit" in name:
        assert state["state1"].dtype == torch.uint8 and state["state2"].dtype == torch.uint8


def test_paged_optimizer_runs_as_plain_8bit_on_cpu_and_the_run_records_it(small_data, tiny_models, tmp_path, capsys):
    from runner.train import optimizer_on

    assert optimizer_on("paged_adamw_8bit", "cuda") == "paged_adamw_8bit"
    manifest = _manifest(tmp_path, small_data, tiny_models, "paged", steps=1, optimizer="paged_adamw_8bit")
    trained = _run(manifest, tmp_path / "storage")
    assert trained["train"]["optimizer"] == "adamw_8bit"
    assert "paged_adamw_8bit pages state out of GPU memory; on cpu adamw_8bit runs instead" in capsys.readouterr().out


# --- full fine-tuning's master weights ------------------------------------------------------------


def test_full_fine_tuning_keeps_float32_master_weights_under_bf16_autocast_on_a_gpu(tiny_models):
    import torch
    from transformers import AutoModelForCausalLM

    from runner.methods import MethodContext
    from runner.methods.full import FullSpec, apply
    from runner.training_stage import autocast_bf16

    def applied(device: str):
        model = AutoModelForCausalLM.from_pretrained(str(tiny_models["llama"]), dtype=torch.bfloat16)
        context = MethodContext(total_steps=1, model_type="llama", tokenizer=None, device=device)
        return apply(model, FullSpec(), context)

    on_gpu = applied("cuda")  # what apply does on a GPU; the tensors themselves stay on the CPU here
    assert {p.dtype for p in on_gpu.parameters()} == {torch.float32} and all(p.requires_grad for p in on_gpu.parameters())
    assert autocast_bf16(torch.bfloat16, "cuda"), "the trainer autocasts to the base's bfloat16"
    assert {p.dtype for p in applied("cpu").parameters()} == {torch.bfloat16}, "on CPU the model is left as loaded"
    assert not autocast_bf16(torch.float32, "cpu") and not autocast_bf16(torch.bfloat16, "cpu")
    assert not autocast_bf16(torch.float32, "cuda"), "a float32 base trains in float32"


def test_full_fine_tuning_evaluates_its_float32_weights_in_the_base_dtype(tiny_models, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from runner.methods.full import load_trained, save_trained

    trained = AutoModelForCausalLM.from_pretrained(str(tiny_models["llama"]), dtype=torch.float32)
    save_trained(trained, tmp_path / "adapter")
    base = AutoModelForCausalLM.from_pretrained(str(tiny_models["llama"]), dtype=torch.bfloat16)
    evaluated = load_trained(base, tmp_path / "adapter", None)
    assert evaluated.dtype == torch.bfloat16

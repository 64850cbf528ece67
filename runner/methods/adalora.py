"""`adalora`: LoRA whose rank budget is reallocated across layers while training (Zhang et al. 2023), via peft."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from runner.errors import UserError
from runner import memory_plan as mp
from runner.methods import Method, MethodContext, TargetModules, peft_target_modules, register, require_modules
from runner.methods.lora import ALPHA_MAX
from runner.spec import STEPS_MAX, Spec

if TYPE_CHECKING:
    from runner.manifest import Manifest

RANK_PATTERN_FILE = "rank_pattern.json"


class AdaloraSpec(Spec):
    """AdaLoRA: SVD-shaped adapters P·diag(E)·Q start at rank init_r; singular values of low importance
    are pruned on a cubic schedule until the average rank is target_r."""

    kind: Literal["adalora"] = "adalora"
    init_r: int = Field(12, ge=1, le=1024)
    """Starting rank of every adapted matrix."""
    target_r: int = Field(8, ge=1, le=1024, validate_default=True)
    """Average rank left when pruning ends: the budget is target_r × the number of adapted matrices."""
    tinit: int = Field(0, ge=0, le=STEPS_MAX)
    """Optimizer steps of warm-up at the full budget before pruning starts."""
    tfinal: int = Field(0, ge=0, le=STEPS_MAX)
    """Optimizer steps at the end that train the final ranks without further pruning."""
    deltaT: int = Field(1, ge=1, le=STEPS_MAX)
    """Steps between two budget reallocations during pruning."""
    beta1: float = Field(0.85, gt=0, lt=1)
    """EMA coefficient smoothing the sensitivity |w·∂L/∂w| of each weight."""
    beta2: float = Field(0.85, gt=0, lt=1)
    """EMA coefficient of the sensitivity's uncertainty."""
    orth_reg_weight: float = Field(0.5, ge=0, le=1000)
    """Weight of the penalty keeping P and Q orthogonal (‖PᵀP − I‖ + ‖QQᵀ − I‖)."""
    alpha: float = Field(32, gt=0, le=ALPHA_MAX)
    """Scaling numerator: the update is multiplied by alpha / (current rank)."""
    dropout: float = Field(0.05, ge=0, lt=1)
    """Dropout on the adapter input during training."""
    target_modules: TargetModules = "all-linear"  # documented and checked where TargetModules is declared

    @field_validator("target_r")
    @classmethod
    def _target_within_initial(cls, value: int, info: ValidationInfo) -> int:
        init_r = info.data.get("init_r")
        if init_r is not None and value > init_r:
            raise ValueError(f"target_r ({value}) must not exceed init_r ({init_r}): pruning cannot add rank")
        return value


def _schedule_problem(spec: AdaloraSpec, total_steps: int) -> str | None:
    # peft needs at least one pruning step between warm-up and the final phase.
    if spec.tinit + spec.tfinal >= total_steps:
        return (
            f"tinit + tfinal ({spec.tinit} + {spec.tfinal} = {spec.tinit + spec.tfinal}) must be less than the "
            f"{total_steps} training steps, leaving steps in which ranks are pruned"
        )
    return None


def _cross_checks(manifest: Manifest) -> list[tuple[tuple[Any, ...], str]]:
    # With epochs the step count depends on the data size; apply() checks it then.
    steps = manifest.train.max_steps
    problem = _schedule_problem(manifest.method, steps) if steps > 0 else None
    return [(("method", "tfinal"), problem)] if problem else []


def apply(model: Any, spec: AdaloraSpec, context: MethodContext) -> Any:
    """Wrap the model in peft AdaLoRA adapters scheduled over the run's optimizer steps."""
    from peft import AdaLoraConfig, get_peft_model

    problem = _schedule_problem(spec, context.total_steps)
    if problem:
        raise UserError(f"method.tfinal: {problem}")
    targets = peft_target_modules(spec.target_modules)
    if targets != "all-linear":
        require_modules(model, targets, "method.target_modules")
    config = AdaLoraConfig(
        task_type="CAUSAL_LM",
        init_r=spec.init_r,
        target_r=spec.target_r,
        tinit=spec.tinit,
        tfinal=spec.tfinal,
        deltaT=spec.deltaT,
        beta1=spec.beta1,
        beta2=spec.beta2,
        orth_reg_weight=spec.orth_reg_weight,
        total_step=context.total_steps,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=targets,
    )
    peft_model = get_peft_model(model, config)
    # peft upcasts bf16/fp16 adapter tensors by reassigning them into their ParameterDict, which
    # re-wraps `ranknum` (the rank the scaling divides by) as a trainable Parameter; on a bf16
    # GPU base the optimizer would then train it. It is a constant.
    for name, parameter in peft_model.named_parameters():
        if ".ranknum." in name:
            parameter.requires_grad_(False)
    return peft_model


def _orthogonal_penalty(model: Any) -> Any:
    """Mean over adapted matrices of ‖PᵀP − I‖_F and ‖QQᵀ − I‖_F, as peft's AdaLoraModel.forward computes it."""
    import torch

    name = model.base_model.trainable_adapter_name
    terms = []
    for param_name, param in model.named_parameters():
        if param.requires_grad and f".{name}" in param_name and ("lora_A" in param_name or "lora_B" in param_name):
            cov = param @ param.T if "lora_A" in param_name else param.T @ param
            terms.append(torch.linalg.matrix_norm(cov - torch.eye(cov.shape[0], device=cov.device, dtype=cov.dtype)))
    return torch.stack(terms).mean() if terms else None


def trainer_callbacks(model: Any, spec: AdaloraSpec, total_steps: int) -> list:
    """A callback that adds the orthogonality gradient and reallocates ranks after every optimizer step."""
    from transformers import TrainerCallback

    class RankAllocation(TrainerCallback):
        """Runs AdaLoRA's budget step while the gradients it scores importance by are still present."""

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            # peft adds the penalty to `outputs.loss`, but trl's SFT loss is built from the fused
            # head's log-probabilities and never reads it; add its gradient here instead, once per
            # optimizer step (after gradient clipping, which only sees the language-model loss).
            if spec.orth_reg_weight > 0:
                penalty = _orthogonal_penalty(model)
                if penalty is not None:
                    (spec.orth_reg_weight * penalty).backward()

        def on_optimizer_step(self, args, state, control, **kwargs):
            # The Trainer calls this after optimizer.step() and before zero_grad(), with
            # global_step still counting completed steps (0 on the first), as peft expects.
            model.base_model.update_and_allocate(state.global_step)

        def on_save(self, args, state, control, **kwargs):
            # peft trims a saved adapter to its surviving ranks, but training goes on with full-size,
            # masked matrices, and the Trainer's resume loads the checkpoint into those (and their
            # optimizer state). Rewrite the checkpoint untrimmed, keeping the pattern beside it.
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            config = model.peft_config[model.base_model.trainable_adapter_name]
            pattern, config.rank_pattern = config.rank_pattern, None
            try:
                model.save_pretrained(checkpoint)
            finally:
                config.rank_pattern = pattern
            if pattern:
                (checkpoint / RANK_PATTERN_FILE).write_text(json.dumps(rank_pattern(model)))

        def on_train_begin(self, args, state, control, **kwargs):
            # Resumed: the masks live on as zeros in the weights; the pattern is needed once pruning
            # has ended. The importance averages start afresh (they are not checkpointed).
            saved = Path(args.output_dir) / f"checkpoint-{state.global_step}" / RANK_PATTERN_FILE
            if state.global_step > 0 and saved.is_file():
                config = model.peft_config[model.base_model.trainable_adapter_name]
                config.rank_pattern = json.loads(saved.read_text())

        def on_train_end(self, args, state, control, **kwargs):
            # Pruned singular values may have moved off zero at the last step when it was not a
            # reallocation step (deltaT > 1); zero them so the model evaluated now is the one saved.
            pattern = model.peft_config[model.base_model.trainable_adapter_name].rank_pattern
            if pattern:
                model.base_model.rankallocator.mask_using_rank_pattern(model.base_model.model, pattern)

    return [RankAllocation()]


def rank_pattern(model: Any) -> dict[str, list[bool]]:
    """Which singular values of each adapted matrix survived pruning (all, before any pruning)."""
    name = model.base_model.trainable_adapter_name
    pattern = model.peft_config[name].rank_pattern
    if not pattern:
        pattern = {n: [True] * p.shape[0] for n, p in model.named_parameters() if f"lora_E.{name}" in n}
    # Keys as peft writes them to adapter_config.json: parameter names without the adapter name.
    return {key.replace(f".{name}", ""): [bool(v) for v in list(value)] for key, value in pattern.items()}


def save_trained(model: Any, folder: Path) -> None:
    """Save the pruned adapter, plus rank_pattern.json: surviving singular values per matrix."""
    pattern = rank_pattern(model)
    # peft writes the pattern into adapter_config.json too and trims the saved tensors to it,
    # so loading restores the pruned ranks; the separate file is for people and reports.
    model.save_pretrained(folder)
    (folder / RANK_PATTERN_FILE).write_text(json.dumps(pattern, indent=1, sort_keys=True))


def memory(spec: Any, shape: mp.ModelShape, e: int, autocast: bool) -> mp.Adaptation:
    """What this method adds to a model's memory, for `runner plan --gpu-memory` (runner/memory_plan.py)."""
    targets = mp.adapted_linears(spec.target_modules, shape)
    # P (init_r × in), Q (out × init_r) and the singular values E (init_r); ranknum is frozen.
    sizes, saved, masked = mp.lora_shaped(shape, targets, spec.init_r, spec.dropout, 4, e, False, autocast, extra_per_matrix=1)
    params = sum(sizes) * shape.layers
    # peft's forward adds ‖PᵀP − I‖ + ‖QQᵀ − I‖ whenever the output has a loss (trl's fused one
    # included, though trl then drops the term); under autocast both products keep bfloat16
    # copies of P and Q, transposed and not: 4 bytes per element of P and Q.
    penalty = 4 * (params - sum(sizes[2::3]) * shape.layers) if autocast else 0
    return mp.Adaptation(
        tuple(sizes * shape.layers), 4, saved, masked, min(mp.LAYER_POSITIONS[n] for n in targets), importance_copies=3,
        autocast_copies=mp.autocast_copies(params, 4, autocast), penalty_copies=penalty,
    )


register(
    "adalora",
    Method(
        spec=AdaloraSpec,
        apply=apply,
        trains=True,
        cross_checks=_cross_checks,
        trainer_callbacks=trainer_callbacks,
        save_trained=save_trained,
        mergeable=True,
        memory=memory,
    ),
)

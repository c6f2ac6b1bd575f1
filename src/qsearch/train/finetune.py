"""Quantization-aware fine-tuning of a policy: LSQ + periodic regularizer (+ distillation).

SPEC section 5: start from the float weights, quantize with the policy's bits, train with
SGD (momentum, cosine lr) plus ``lambda * mean(sin^2(pi w / s))`` with lambda rising over
training, optionally distilling from the float model. Every epoch is checkpointed into the
work directory, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from qsearch.data import DataSplits, eval_loader
from qsearch.quant.layers import QuantizerSpec, calibrate, quantize_model
from qsearch.quant.policy import Policy
from qsearch.quant.regularizer import PeriodicRegularizer
from qsearch.train.distill import distillation_loss
from qsearch.train.fit import Monitor, TrainContext, fit, validation_row
from qsearch.train.loop import (
    LossFn,
    TrainStep,
    build_optimizer,
    cosine_schedule,
    cross_entropy_loss,
    evaluate,
)
from qsearch.train.recipe import FinetuneRecipe
from qsearch.train.runtime import Runtime


@dataclass
class FinetuneResult:
    """The fine-tuned quantized model and its accuracies in percent."""

    model: nn.Module
    accuracy: dict[str, float]  # before_val, before_test, after_val, after_test
    history: list[dict[str, float]] = field(default_factory=list)


def build_quantized(
    float_model: nn.Module, policy: Policy, spec: QuantizerSpec, data: DataSplits, runtime: Runtime
) -> nn.Module:
    """A quantized copy of ``float_model`` with quantizers calibrated on one train batch."""
    model = quantize_model(copy.deepcopy(float_model), policy, spec)
    model = runtime.prepare(model)
    images, _ = next(iter(eval_loader(data, "train", batch_size=256, device=str(runtime.device))))
    calibrate(model, images)
    return model


class RegularizerHook:
    """The periodic regularizer as a :class:`~qsearch.train.loop.LossHook`: lambda follows
    the fraction of training steps done (read off the lr schedule, so it resumes too)."""

    def __init__(
        self,
        regularizer: PeriodicRegularizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        total_steps: int,
        device: torch.device,
    ) -> None:
        self.regularizer, self.scheduler = regularizer, scheduler
        self.total_steps, self.device = total_steps, device

    def __call__(self) -> torch.Tensor:
        """``lambda(t) * mean(sin^2(pi w / s))`` at step ``t`` of training."""
        self.regularizer.set_progress(self.scheduler.last_epoch / self.total_steps)
        return self.regularizer().to(self.device)

    def epoch_metrics(self) -> dict[str, float]:
        """The current ``lambda`` and the unweighted sin^2 ``penalty``."""
        penalty = float(self.regularizer.penalty().detach())
        return {"lambda": self.regularizer.current, "penalty": penalty}


def task_loss(float_model: nn.Module, recipe: FinetuneRecipe, runtime: Runtime) -> LossFn:
    """Cross entropy, or distillation from ``float_model`` when ``recipe.distill_alpha > 0``."""
    smoothing = recipe.label_smoothing
    if recipe.distill_alpha <= 0:
        return cross_entropy_loss(smoothing)
    teacher = runtime.prepare(copy.deepcopy(float_model))
    return distillation_loss(teacher, recipe.distill_alpha, recipe.distill_temperature, smoothing)


def finetune(
    float_model: nn.Module,
    policy: Policy,
    spec: QuantizerSpec,
    recipe: FinetuneRecipe,
    context: TrainContext,
    monitor: Monitor | None = None,
    init: nn.Module | None = None,
) -> FinetuneResult:
    """Fine-tune ``policy`` on ``float_model`` with ``recipe`` (``conf/finetune.yaml``).

    ``init``: the quantized model to start from (its quantizers initialized), instead of
    ``float_model`` quantized and calibrated (``finetune.init=supernet``). With
    ``context.workdir`` set, ``last.pt`` is written there after every epoch and picked up
    again by a later call with the same arguments.
    """
    torch.manual_seed(context.seed)
    runtime = context.runtime
    if init is None:
        model = build_quantized(float_model, policy, spec, context.data, runtime)
    else:
        model = runtime.prepare(init)
    val, test = context.eval_loader("val"), context.eval_loader("test")
    accuracy = {
        "before_val": evaluate(model, val, runtime).accuracy,
        "before_test": evaluate(model, test, runtime).accuracy,
    }
    loader = context.train_loader(recipe.batch_size)
    epochs = recipe.epochs
    total_steps = max(1, epochs * len(loader))
    optimizer = build_optimizer(model, recipe)
    scheduler = cosine_schedule(optimizer, total_steps, recipe.warmup_epochs * len(loader))
    regularizer = PeriodicRegularizer(model, recipe.lambda_max, recipe.lambda_schedule)
    hook = RegularizerHook(regularizer, scheduler, total_steps, runtime.device)
    loss_fn = task_loss(float_model, recipe, runtime)
    step = TrainStep(model, optimizer, scheduler, runtime, loss_fn, hook)
    history = fit(
        step,
        loader,
        epochs,
        validation_row(model, val, runtime),
        title=f"finetune {policy.model}",
        resume=context.resume_file(),
        monitor=monitor,
    )
    accuracy["after_val"] = evaluate(model, val, runtime).accuracy
    accuracy["after_test"] = evaluate(model, test, runtime).accuracy
    return FinetuneResult(model=model, accuracy=accuracy, history=history)


def finetune_summary(result: FinetuneResult, float_meta: dict[str, Any]) -> dict[str, Any]:
    """Accuracies in one flat mapping: float, quantized before and after fine-tuning."""
    return {
        "float_val": float_meta["val_acc"],
        "float_test": float_meta["test_acc"],
        **result.accuracy,
    }

"""Quantization-aware fine-tuning of a policy: LSQ + periodic regularizer (+ distillation).

SPEC section 5: start from the float weights, quantize with the policy's bits, train with
SGD (momentum, cosine lr) plus ``lambda * mean(sin^2(pi w / s))`` with lambda rising over
training, optionally distilling from the float model. Every epoch is checkpointed into the
work directory, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from qsearch.data import DataSplits, eval_loader, train_loader
from qsearch.quant.layers import QuantizerSpec, calibrate, quantize_model
from qsearch.quant.policy import Policy
from qsearch.quant.regularizer import PeriodicRegularizer
from qsearch.report.progress import training_progress
from qsearch.train.distill import distillation_loss
from qsearch.train.float_model import EpochCallback
from qsearch.train.loop import (
    build_optimizer,
    cosine_schedule,
    cross_entropy_loss,
    evaluate,
    restore_epoch_state,
    save_epoch_state,
    train_one_epoch,
)
from qsearch.train.runtime import Runtime
from qsearch.utils.io import load_torch

log = logging.getLogger(__name__)


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


def finetune(
    float_model: nn.Module,
    policy: Policy,
    spec: QuantizerSpec,
    data: DataSplits,
    runtime: Runtime,
    recipe: DictConfig,
    dataset_cfg: DictConfig,
    *,
    seed: int,
    workdir: Path | None = None,
    on_epoch_end: EpochCallback | None = None,
    quiet: bool = False,
) -> FinetuneResult:
    """Fine-tune ``policy`` on ``float_model`` with ``recipe`` (``conf/finetune.yaml``).

    With ``workdir`` set, ``workdir/last.pt`` is written after every epoch and picked up
    again by a later call with the same arguments.
    """
    torch.manual_seed(seed)
    device = str(runtime.device)
    model = build_quantized(float_model, policy, spec, data, runtime)
    val, test = eval_loader(data, "val", device=device), eval_loader(data, "test", device=device)
    accuracy = {
        "before_val": evaluate(model, val, runtime).accuracy,
        "before_test": evaluate(model, test, runtime).accuracy,
    }
    loader = train_loader(data, dataset_cfg, int(recipe.batch_size), seed, device)
    epochs = int(recipe.epochs)
    total_steps = max(1, epochs * len(loader))
    optimizer = build_optimizer(model, recipe)
    scheduler = cosine_schedule(optimizer, total_steps, int(recipe.warmup_epochs) * len(loader))
    regularizer = PeriodicRegularizer(
        model, float(recipe.regularizer.lambda_max), str(recipe.regularizer.schedule)
    )
    steps_done = 0

    def regularization() -> torch.Tensor:
        nonlocal steps_done
        regularizer.set_progress(steps_done / total_steps)
        steps_done += 1
        return regularizer().to(runtime.device)

    if float(recipe.distill.alpha) > 0:
        teacher = runtime.prepare(copy.deepcopy(float_model))
        loss_fn = distillation_loss(
            teacher,
            float(recipe.distill.alpha),
            float(recipe.distill.temperature),
            float(recipe.label_smoothing),
        )
    else:
        loss_fn = cross_entropy_loss(float(recipe.label_smoothing))

    history: list[dict[str, float]] = []
    start_epoch = 0
    resume = workdir / "last.pt" if workdir is not None else None
    if resume is not None and resume.is_file():
        state = load_torch(resume)
        start_epoch, history = restore_epoch_state(state, model, optimizer, scheduler)
        accuracy = dict(state["accuracy"])
        steps_done = start_epoch * len(loader)
        log.info("resuming fine-tuning at epoch %d/%d", start_epoch + 1, epochs)

    with training_progress(disable=quiet) as progress:
        task = progress.add_task(f"finetune {policy.model}", total=epochs, completed=start_epoch)
        for epoch in range(start_epoch, epochs):
            loader.set_epoch(epoch)
            stats = train_one_epoch(
                model,
                loader,
                optimizer,
                scheduler,
                runtime,
                loss_fn=loss_fn,
                extra_loss=regularization,
                progress=None if quiet else progress,
                description=f"epoch {epoch + 1}",
            )
            val_stats = evaluate(model, val, runtime)
            row = {
                "epoch": epoch + 1,
                "lr": optimizer.param_groups[0]["lr"],
                "lambda": regularizer.current,
                "penalty": float(regularizer.penalty().detach()),
                "train_loss": stats.loss,
                "train_acc": stats.accuracy,
                "val_loss": val_stats.loss,
                "val_acc": val_stats.accuracy,
                "seconds": stats.seconds + val_stats.seconds,
            }
            history.append(row)
            if not quiet:
                log.info(
                    "epoch %d/%d  loss %.4f  val %.2f%%  lambda %.2g  sin2 %.3f  (%.1fs)",
                    epoch + 1,
                    epochs,
                    stats.loss,
                    val_stats.accuracy,
                    row["lambda"],
                    row["penalty"],
                    row["seconds"],
                )
            if resume is not None:
                save_epoch_state(
                    resume, model, optimizer, scheduler, epoch + 1, history, accuracy=accuracy
                )
            progress.update(task, advance=1, loss=stats.loss, acc=val_stats.accuracy)
            if on_epoch_end is not None:
                on_epoch_end(epoch, row)

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

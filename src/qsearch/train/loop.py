"""One epoch of SGD steps, evaluation, and the optimizer/schedule of a training recipe."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from rich.progress import Progress
from torch import Tensor, nn

from qsearch.errors import UserError
from qsearch.train.recipe import OptimizerSettings
from qsearch.train.runtime import Runtime


class Batches(Protocol):
    """What the loops iterate: a sized iterable of ``(images, labels)`` (a TensorLoader)."""

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]: ...

    def __len__(self) -> int: ...


LossFn = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``loss_fn(logits, labels, images) -> scalar``; images let distillation query a teacher."""


@dataclass(frozen=True)
class EpochStats:
    """Mean loss, accuracy in percent, and wall time in seconds of one pass."""

    loss: float
    accuracy: float
    seconds: float


def cross_entropy_loss(label_smoothing: float = 0.0) -> LossFn:
    """Plain (optionally label-smoothed) cross entropy as a :data:`LossFn`."""

    def loss(logits: Tensor, labels: Tensor, images: Tensor) -> Tensor:
        return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)

    return loss


def build_optimizer(model: nn.Module, recipe: OptimizerSettings) -> torch.optim.Optimizer:
    """SGD with momentum; no weight decay on biases, norms and other 1-d parameters."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.dim() > 1 else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": float(recipe.weight_decay)},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.SGD(
        groups,
        lr=float(recipe.lr),
        momentum=float(recipe.momentum),
        nesterov=bool(recipe.nesterov),
    )


def cosine_schedule(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine decay to zero over ``total_steps`` (stepped per batch)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class LossHook(Protocol):
    """An extra loss term added after every forward pass (a regularizer, a cost hinge).

    ``epoch_metrics`` returns the hook's entries of the epoch's history row and starts the
    next epoch's tally.
    """

    def __call__(self) -> Tensor: ...

    def epoch_metrics(self) -> dict[str, float]: ...


@dataclass(frozen=True)
class TrainStep:
    """What one SGD step needs: model, optimizer, per-batch lr schedule, runtime, losses.

    ``loss_fn`` is the task loss (cross entropy, distillation); ``extra_loss`` an optional
    model-level term added to it (the periodic regularizer, the BitOPs hinge).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    runtime: Runtime
    loss_fn: LossFn
    extra_loss: LossHook | None = None


def forward(model: nn.Module, images: Tensor, runtime: Runtime) -> Tensor:
    """``model(images)`` under the runtime's autocast and memory format."""
    if runtime.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with runtime.autocast():
        return model(images)


class TrainingDiverged(UserError):
    """A non-finite training loss: the run stops before it takes a step on it (nothing
    diverged is ever saved); most often the learning rate is too high."""


def train_one_epoch(
    step: TrainStep,
    loader: Batches,
    *,
    max_steps: int | None = None,
    progress: Progress | None = None,
    description: str = "train",
) -> EpochStats:
    """One pass of SGD steps over ``loader`` (or its first ``max_steps`` batches).

    Returns the mean task loss and the training accuracy (percent) of the batches seen.

    Raises:
        TrainingDiverged: a batch's loss is not finite (before its step is taken).
    """
    model, optimizer = step.model, step.optimizer
    model.train()
    steps = len(loader) if max_steps is None else min(max_steps, len(loader))
    task = progress.add_task(description, total=steps) if progress else None
    start, seen, correct, loss_sum = time.perf_counter(), 0, 0, 0.0
    for index, (images, labels) in enumerate(loader):
        if index >= steps:
            break
        if step.runtime.channels_last:  # the loss (a teacher) sees the same layout
            images = images.contiguous(memory_format=torch.channels_last)
        logits = forward(model, images, step.runtime)
        loss = step.loss_fn(logits, labels, images)
        total = loss + step.extra_loss() if step.extra_loss is not None else loss
        if not math.isfinite(value := float(total.detach())):
            raise TrainingDiverged(f"the training loss became {value} at step {index + 1}")
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        if step.scheduler is not None:
            step.scheduler.step()
        batch = labels.shape[0]
        seen += batch
        loss_sum += float(loss.detach()) * batch
        correct += int((logits.detach().argmax(1) == labels).sum())
        if progress is not None and task is not None:
            progress.update(task, advance=1, loss=loss_sum / seen, acc=100.0 * correct / seen)
    if progress is not None and task is not None:
        progress.remove_task(task)
    return EpochStats(
        loss_sum / max(seen, 1), 100.0 * correct / max(seen, 1), time.perf_counter() - start
    )


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Batches, runtime: Runtime, max_batches: int | None = None
) -> EpochStats:
    """Cross-entropy loss and top-1 accuracy (percent) of ``model`` over ``loader``."""
    model.eval()
    start, seen, correct, loss_sum = time.perf_counter(), 0, 0, 0.0
    for batch_index, (images, labels) in enumerate(loader):
        if max_batches is not None and batch_index >= max_batches:
            break
        logits = forward(model, images, runtime)
        loss_sum += float(F.cross_entropy(logits.float(), labels, reduction="sum"))
        correct += int((logits.argmax(1) == labels).sum())
        seen += labels.shape[0]
    return EpochStats(
        loss_sum / max(seen, 1), 100.0 * correct / max(seen, 1), time.perf_counter() - start
    )

"""The one epoch driver of every training run: float training, fine-tuning, dynamic.

A caller builds a :class:`TrainStep` (model, optimizer, schedule, runtime, task loss and an
optional :class:`~qsearch.train.loop.LossHook`), a validation row and, for a run that may
be killed, a :class:`ResumeFile`; :func:`fit` then trains epoch after epoch, writing
``last.pt`` after each so that a later call continues exactly where the killed one stopped
(the CPU RNG state included). Progress display and a per-epoch callback come in through a
:class:`Monitor`, so nothing here draws on its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from rich.progress import Progress
from torch import nn

from qsearch.data import DataSplits, TensorLoader, eval_loader, train_loader
from qsearch.train.loop import Batches, TrainingDiverged, TrainStep, evaluate, train_one_epoch
from qsearch.train.runtime import Runtime
from qsearch.utils.io import load_torch, save_torch
from qsearch.utils.logs import DETAIL

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, float]], None]
"""``on_epoch_end(epoch, row)``: ``epoch`` counts from 0, ``row`` is the history row."""

ValidationRow = Callable[[], dict[str, float]]
"""Validation entries of an epoch's history row; must hold ``val_acc`` (percent)."""


@dataclass(frozen=True)
class Monitor:
    """How a run shows itself: a rich progress display (epochs and batches; None draws
    nothing), a log line per epoch, and a callback after every epoch."""

    progress: Progress | None = None
    log: bool = True
    on_epoch_end: EpochCallback | None = None


@dataclass(frozen=True)
class TrainContext:
    """What a training run reads besides its model and recipe.

    ``dataset_cfg`` supplies the train loader's augmentation; ``workdir``, when set, is
    where ``last.pt`` lives so that a killed run resumes.
    """

    data: DataSplits
    runtime: Runtime
    dataset_cfg: DictConfig
    seed: int
    workdir: Path | None = None

    def train_loader(self, batch_size: int) -> TensorLoader:
        """The shuffled (and augmented) train split, seeded by :attr:`seed`."""
        device = str(self.runtime.device)
        return train_loader(self.data, self.dataset_cfg, batch_size, self.seed, device)

    def eval_loader(self, split: str) -> TensorLoader:
        """The ``val`` or ``test`` split in order, on the run's device."""
        return eval_loader(self.data, split, device=str(self.runtime.device))

    def resume_file(self, **identity: Any) -> ResumeFile | None:
        """``workdir/last.pt`` (None without a workdir)."""
        return None if self.workdir is None else ResumeFile(self.workdir / "last.pt", identity)


@dataclass(frozen=True)
class ResumeFile:
    """``last.pt``: what a killed run needs to continue after its last finished epoch.

    ``identity`` is saved with the state; a file whose identity differs (another cache
    key) is ignored rather than resumed.
    """

    path: Path
    identity: Mapping[str, Any] = field(default_factory=dict)

    def restore(self, step: TrainStep) -> tuple[int, list[dict[str, float]]]:
        """Load the saved state into ``step``; returns (epochs done, history so far)."""
        if not self.path.is_file():
            return 0, []
        state = load_torch(self.path)
        if any(state.get(key) != value for key, value in self.identity.items()):
            return 0, []
        step.model.load_state_dict(state["model"])
        step.optimizer.load_state_dict(state["optimizer"])
        if step.scheduler is not None:
            step.scheduler.load_state_dict(state["scheduler"])
        if "rng" in state:  # the Gumbel noise of dynamic training; dropout
            torch.set_rng_state(state["rng"])
        return int(state["epoch"]), list(state["history"])

    def save(self, step: TrainStep, epoch: int, history: list[dict[str, float]]) -> None:
        """Write the state after ``epoch`` epochs atomically."""
        state = {
            "epoch": epoch,
            "history": history,
            "model": step.model.state_dict(),
            "optimizer": step.optimizer.state_dict(),
            "scheduler": None if step.scheduler is None else step.scheduler.state_dict(),
            "rng": torch.get_rng_state(),
        }
        save_torch(self.path, {**state, **self.identity})


def validation_row(model: nn.Module, loader: Batches, runtime: Runtime) -> ValidationRow:
    """``val_loss`` (cross entropy) and ``val_acc`` (percent) of ``model`` on ``loader``."""

    def row() -> dict[str, float]:
        stats = evaluate(model, loader, runtime)
        return {"val_loss": stats.loss, "val_acc": stats.accuracy}

    return row


def fit(
    step: TrainStep,
    loader: TensorLoader,
    epochs: int,
    validate: ValidationRow,
    *,
    title: str,
    resume: ResumeFile | None = None,
    monitor: Monitor | None = None,
) -> list[dict[str, float]]:
    """Train ``epochs`` epochs (continuing from ``resume`` when it holds a state).

    Returns the history: per epoch ``epoch``, ``lr``, ``train_loss``, ``train_acc``
    (percent), the loss hook's and the validation's entries, and ``seconds``.
    """
    monitor = monitor or Monitor()
    start, history = resume.restore(step) if resume is not None else (0, [])
    if start:
        log.info("resuming %s at epoch %d/%d", title, start + 1, epochs)
    progress = monitor.progress
    task = progress.add_task(title, total=epochs, completed=start) if progress else None
    for epoch in range(start, epochs):
        try:
            row = _epoch(step, loader, epoch, validate, progress)
        except TrainingDiverged as exc:
            raise _diverged(exc, title, epoch, epochs, resume) from exc
        history.append(row)
        if monitor.log:
            log.info("epoch %d/%d  %s", epoch + 1, epochs, _describe(row), extra=DETAIL)
        if resume is not None:
            resume.save(step, epoch + 1, history)
        if progress is not None and task is not None:
            progress.update(task, advance=1, loss=row["train_loss"], acc=row["val_acc"])
        if monitor.on_epoch_end is not None:
            monitor.on_epoch_end(epoch, row)
    if progress is not None and task is not None:
        progress.remove_task(task)
    if monitor.log and len(history) > start:
        seconds = sum(row["seconds"] for row in history[start:])
        last = _describe(history[-1], seconds=False)
        log.info("%s: %d epochs in %.1fs; last epoch  %s", title, epochs - start, seconds, last)
    return history


def _diverged(
    exc: TrainingDiverged, title: str, epoch: int, epochs: int, resume: ResumeFile | None
) -> TrainingDiverged:
    """The one-line report of a diverged run: where, the likely cause, what was kept."""
    if resume is not None and epoch > 0:
        kept = f"; {resume.path} holds the state after epoch {epoch} (resume continues from it)"
    else:
        kept = "; nothing was saved"
    return TrainingDiverged(
        f"{title} diverged in epoch {epoch + 1}/{epochs}: {exc} (the learning rate is the "
        f"likely cause){kept}"
    )


def _epoch(
    step: TrainStep,
    loader: TensorLoader,
    epoch: int,
    validate: ValidationRow,
    progress: Progress | None,
) -> dict[str, float]:
    """Train one epoch and validate; the epoch's history row."""
    loader.set_epoch(epoch)
    start = time.perf_counter()
    stats = train_one_epoch(step, loader, progress=progress, description=f"epoch {epoch + 1}")
    row = {
        "epoch": epoch + 1,
        "lr": step.optimizer.param_groups[0]["lr"],
        "train_loss": stats.loss,
        "train_acc": stats.accuracy,
    }
    validation = validate()
    if step.extra_loss is not None:
        row.update(step.extra_loss.epoch_metrics())
    return {**row, **validation, "seconds": time.perf_counter() - start}


def _describe(row: Mapping[str, float], seconds: bool = True) -> str:
    """One log line of a history row: losses, accuracies, the hook's terms, seconds."""
    parts = [f"loss {row['train_loss']:.4f}", f"train {row['train_acc']:.2f}%"]
    parts.append(f"val {row['val_acc']:.2f}%")
    shown = {"epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"}
    parts += [f"{key} {value:.4g}" for key, value in row.items() if key not in shown]
    text = "  ".join(parts)
    return f"{text}  ({row['seconds']:.1f}s)" if seconds else text

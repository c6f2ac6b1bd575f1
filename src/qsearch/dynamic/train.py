"""Joint training of the dynamic network and its bit controller, and per-sample evaluation.

Loss (Liu et al., CVPR 2022, eq. 7): ``CE(f(x), y) + alpha * max(0, mean_x C(x) - target)``
with ``C(x)`` the sample's BitOPs relative to the static base policy (:class:`BitCost`). The
hinge is on the batch mean, so the controller may spend more bits on some samples and fewer
on others as long as the average meets the target. Starts from the float weights, SGD with
momentum and a cosine lr (the controller at its own lr); every epoch is checkpointed into
the work directory, so a killed run resumes where it stopped (the Gumbel noise's RNG state
included, so the resumed run equals an uninterrupted one).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from qsearch.data import DataSplits, eval_loader, train_loader
from qsearch.dynamic.model import DynamicQuantModel, build_dynamic
from qsearch.dynamic.settings import DynamicPlan, DynamicSettings
from qsearch.models.inventory import LayerInfo
from qsearch.quant.layers import QuantizerSpec, calibrate
from qsearch.quant.policy import Policy
from qsearch.report.progress import training_progress
from qsearch.train.loop import (
    Batches,
    cosine_schedule,
    cross_entropy_loss,
    restore_epoch_state,
    save_epoch_state,
    train_one_epoch,
)
from qsearch.train.runtime import Runtime
from qsearch.utils.io import load_torch

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass
class DynamicEval:
    """Per-sample results of a dynamic model on one split (tensors on the CPU).

    ``losses``: cross entropy; ``correct``: top-1 hit; ``bitops``: BitOPs (float64);
    ``relative``: BitOPs over the static base policy's; ``choices``: ``(N, L)`` index of
    each dynamic layer's candidate.
    """

    losses: Tensor
    correct: Tensor
    bitops: Tensor
    relative: Tensor
    choices: Tensor

    @property
    def accuracy(self) -> float:
        """Top-1 accuracy in percent."""
        return 100.0 * float(self.correct.float().mean())

    @property
    def mean_cost(self) -> float:
        """Mean per-sample BitOPs relative to the static base policy."""
        return float(self.relative.mean())


@torch.no_grad()
def evaluate_dynamic(model: DynamicQuantModel, loader: Batches, runtime: Runtime) -> DynamicEval:
    """Run ``model`` in eval mode (argmax bits) over ``loader``; keep every sample's numbers."""
    model.eval()
    parts: dict[str, list[Tensor]] = {k: [] for k in ("losses", "correct", "bitops", "choices")}
    for images, labels in loader:
        if runtime.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with runtime.autocast():
            logits = model(images)
        choice = model.last_choice
        assert choice is not None
        parts["losses"].append(F.cross_entropy(logits.float(), labels, reduction="none").cpu())
        parts["correct"].append((logits.argmax(1) == labels).cpu())
        parts["bitops"].append(model.cost.bitops(choice).cpu())
        parts["choices"].append(choice.argmax(-1).cpu())
    joined = {k: torch.cat(v) for k, v in parts.items()}
    return DynamicEval(relative=joined["bitops"] / model.cost.reference, **joined)


@torch.no_grad()
def per_sample_losses(model: nn.Module, loader: Batches, runtime: Runtime) -> Tensor:
    """Cross entropy of every sample of ``loader`` under ``model`` (eval mode), on the CPU."""
    model.eval()
    losses = []
    for images, labels in loader:
        if runtime.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with runtime.autocast():
            logits = model(images)
        losses.append(F.cross_entropy(logits.float(), labels, reduction="none").cpu())
    return torch.cat(losses)


@dataclass
class DynamicResult:
    """The trained dynamic model and its per-epoch history."""

    model: DynamicQuantModel
    history: list[dict[str, float]] = field(default_factory=list)


def build_calibrated(
    float_model: nn.Module,
    inventory: Sequence[LayerInfo],
    base: Policy,
    plan: DynamicPlan,
    spec: QuantizerSpec,
    settings: DynamicSettings,
    data: DataSplits,
    runtime: Runtime,
) -> DynamicQuantModel:
    """A dynamic copy of ``float_model``, every candidate's quantizers calibrated on one
    train batch (all K branches run on every sample, so all of them initialize)."""
    model = build_dynamic(copy.deepcopy(float_model), inventory, base, plan, spec, settings)
    model = runtime.prepare(model)
    images, _ = next(iter(eval_loader(data, "train", batch_size=256, device=str(runtime.device))))
    calibrate(model, images)
    assert isinstance(model, DynamicQuantModel)
    return model


def _optimizer(model: DynamicQuantModel, recipe: DictConfig) -> torch.optim.Optimizer:
    """SGD; the backbone at ``lr``, the controller at ``controller_lr``; no weight decay on
    1-d parameters (biases, norms, quantizer steps)."""
    groups = []
    for part, lr in ((model.backbone, recipe.lr), (model.controller, recipe.controller_lr)):
        params = [p for p in part.parameters() if p.requires_grad]
        for decay in (True, False):
            chosen = [p for p in params if (p.dim() > 1) == decay]
            weight_decay = float(recipe.weight_decay) if decay else 0.0
            groups.append({"params": chosen, "lr": float(lr), "weight_decay": weight_decay})
    return torch.optim.SGD(
        groups, lr=float(recipe.lr), momentum=float(recipe.momentum), nesterov=bool(recipe.nesterov)
    )


def train_dynamic(
    float_model: nn.Module,
    inventory: Sequence[LayerInfo],
    base: Policy,
    plan: DynamicPlan,
    spec: QuantizerSpec,
    settings: DynamicSettings,
    data: DataSplits,
    runtime: Runtime,
    recipe: DictConfig,
    dataset_cfg: DictConfig,
    *,
    seed: int,
    workdir: Path | None = None,
    on_epoch_end: EpochCallback | None = None,
    quiet: bool = False,
) -> DynamicResult:
    """Train backbone and controller jointly for ``recipe.epochs`` (``conf/dynamic.yaml``).

    With ``workdir`` set, ``workdir/last.pt`` is written after every epoch and picked up
    again by a later call with the same arguments.
    """
    torch.manual_seed(seed)
    device = str(runtime.device)
    model = build_calibrated(float_model, inventory, base, plan, spec, settings, data, runtime)
    val = eval_loader(data, "val", device=device)
    loader = train_loader(data, dataset_cfg, int(recipe.batch_size), seed, device)
    epochs = int(recipe.epochs)
    optimizer = _optimizer(model, recipe)
    scheduler = cosine_schedule(
        optimizer, max(1, epochs * len(loader)), int(recipe.warmup_epochs) * len(loader)
    )

    history: list[dict[str, float]] = []
    start_epoch = 0
    resume = workdir / "last.pt" if workdir is not None else None
    if resume is not None and resume.is_file():
        state = load_torch(resume)
        start_epoch, history = restore_epoch_state(state, model, optimizer, scheduler)
        torch.set_rng_state(state["rng"])
        log.info("resuming dynamic training at epoch %d/%d", start_epoch + 1, epochs)

    costs: list[tuple[float, int]] = []  # (batch mean relative BitOPs, batch size)

    def cost_penalty() -> Tensor:
        """alpha * hinge(mean relative BitOPs - target) of the batch just seen."""
        assert model.last_choice is not None
        cost = model.cost.relative(model.last_choice).mean()
        costs.append((float(cost.detach()), model.last_choice.shape[0]))
        return settings.alpha * F.relu(cost - settings.target)

    with training_progress(disable=quiet) as progress:
        task = progress.add_task("dynamic", total=epochs, completed=start_epoch)
        for epoch in range(start_epoch, epochs):
            loader.set_epoch(epoch)
            start = time.perf_counter()
            costs.clear()
            stats = train_one_epoch(
                model,
                loader,
                optimizer,
                scheduler,
                runtime,
                loss_fn=cross_entropy_loss(),
                extra_loss=cost_penalty,
                progress=None if quiet else progress,
                description=f"epoch {epoch + 1}",
            )
            seen = sum(batch for _, batch in costs)
            val_eval = evaluate_dynamic(model, val, runtime)
            row = {
                "epoch": epoch + 1,
                "lr": optimizer.param_groups[0]["lr"],
                "train_loss": stats.loss,
                "train_acc": stats.accuracy,
                "train_cost": sum(cost * batch for cost, batch in costs) / max(seen, 1),
                "val_acc": val_eval.accuracy,
                "val_cost": val_eval.mean_cost,
                "seconds": time.perf_counter() - start,
            }
            history.append(row)
            if not quiet:
                log.info(
                    "epoch %d/%d  loss %.4f  BitOPs %.3fx  val %.2f%% at %.3fx  (%.1fs)",
                    epoch + 1,
                    epochs,
                    row["train_loss"],
                    row["train_cost"],
                    row["val_acc"],
                    row["val_cost"],
                    row["seconds"],
                )
            if resume is not None:
                save_epoch_state(
                    resume,
                    model,
                    optimizer,
                    scheduler,
                    epoch + 1,
                    history,
                    rng=torch.get_rng_state(),
                )
            progress.update(task, advance=1, loss=row["train_loss"], acc=row["val_acc"])
            if on_epoch_end is not None:
                on_epoch_end(epoch, row)
    return DynamicResult(model=model, history=history)

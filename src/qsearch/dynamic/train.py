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
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qsearch.data import DataSplits, eval_loader
from qsearch.dynamic.model import DynamicQuantModel, build_dynamic
from qsearch.dynamic.settings import DynamicPlan, DynamicSettings
from qsearch.models.inventory import LayerInfo
from qsearch.quant.layers import QuantizerSpec, calibrate
from qsearch.quant.policy import Policy
from qsearch.train.fit import Monitor, TrainContext, ValidationRow, fit
from qsearch.train.loop import Batches, TrainStep, cosine_schedule, cross_entropy_loss, forward
from qsearch.train.recipe import DynamicRecipe
from qsearch.train.runtime import Runtime


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
        logits = forward(model, images, runtime)
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
        logits = forward(model, images, runtime)
        losses.append(F.cross_entropy(logits.float(), labels, reduction="none").cpu())
    return torch.cat(losses)


@dataclass
class DynamicResult:
    """The trained dynamic model and its per-epoch history."""

    model: DynamicQuantModel
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass(frozen=True)
class DynamicSetup:
    """What a dynamic network is built from: the float model's layer inventory, the static
    base policy, the static/dynamic plan, the quantizer and the dynamic settings."""

    inventory: Sequence[LayerInfo]
    base: Policy
    plan: DynamicPlan
    spec: QuantizerSpec
    settings: DynamicSettings


def build_calibrated(
    float_model: nn.Module, setup: DynamicSetup, data: DataSplits, runtime: Runtime
) -> DynamicQuantModel:
    """A dynamic copy of ``float_model``, every candidate's quantizers calibrated on one
    train batch (all K branches run on every sample, so all of them initialize)."""
    model = build_dynamic(
        copy.deepcopy(float_model),
        setup.inventory,
        setup.base,
        setup.plan,
        setup.spec,
        setup.settings,
    )
    model = runtime.prepare(model)
    images, _ = next(iter(eval_loader(data, "train", batch_size=256, device=str(runtime.device))))
    calibrate(model, images)
    assert isinstance(model, DynamicQuantModel)
    return model


def _optimizer(model: DynamicQuantModel, recipe: DynamicRecipe) -> torch.optim.Optimizer:
    """SGD; the backbone at ``lr``, the controller at ``controller_lr``; no weight decay on
    1-d parameters (biases, norms, quantizer steps)."""
    groups = []
    for part, lr in ((model.backbone, recipe.lr), (model.controller, recipe.controller_lr)):
        params = [p for p in part.parameters() if p.requires_grad]
        for decay in (True, False):
            chosen = [p for p in params if (p.dim() > 1) == decay]
            weight_decay = recipe.weight_decay if decay else 0.0
            groups.append({"params": chosen, "lr": float(lr), "weight_decay": weight_decay})
    return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov)


class CostHinge:
    """Eq. 7's cost term as a :class:`~qsearch.train.loop.LossHook`:
    ``alpha * max(0, mean_x C(x) - target)`` over the batch just seen."""

    def __init__(self, model: DynamicQuantModel, settings: DynamicSettings) -> None:
        self.model, self.settings = model, settings
        self.costs: list[tuple[float, int]] = []  # (batch mean relative BitOPs, batch size)

    def __call__(self) -> Tensor:
        """The hinge of the last batch's mean relative BitOPs (tallied for the epoch)."""
        choice = self.model.last_choice
        assert choice is not None
        cost = self.model.cost.relative(choice).mean()
        self.costs.append((float(cost.detach()), choice.shape[0]))
        return self.settings.alpha * F.relu(cost - self.settings.target)

    def epoch_metrics(self) -> dict[str, float]:
        """``train_cost``: the epoch's mean per-sample BitOPs relative to the base policy."""
        seen = sum(batch for _, batch in self.costs)
        mean = sum(cost * batch for cost, batch in self.costs) / max(seen, 1)
        self.costs.clear()
        return {"train_cost": mean}


def dynamic_validation(
    model: DynamicQuantModel, loader: Batches, runtime: Runtime
) -> ValidationRow:
    """``val_acc`` (percent) and ``val_cost`` (mean relative BitOPs) on ``loader``."""

    def row() -> dict[str, float]:
        result = evaluate_dynamic(model, loader, runtime)
        return {"val_acc": result.accuracy, "val_cost": result.mean_cost}

    return row


def train_dynamic(
    float_model: nn.Module,
    setup: DynamicSetup,
    recipe: DynamicRecipe,
    context: TrainContext,
    monitor: Monitor | None = None,
) -> DynamicResult:
    """Train backbone and controller jointly for ``recipe.epochs`` (``conf/dynamic.yaml``).

    With ``context.workdir`` set, ``last.pt`` is written there after every epoch (the RNG
    of the Gumbel noise included) and picked up again by a later call with the same
    arguments.
    """
    torch.manual_seed(context.seed)
    runtime = context.runtime
    model = build_calibrated(float_model, setup, context.data, runtime)
    val = context.eval_loader("val")
    loader = context.train_loader(recipe.batch_size)
    epochs = recipe.epochs
    optimizer = _optimizer(model, recipe)
    scheduler = cosine_schedule(
        optimizer, max(1, epochs * len(loader)), recipe.warmup_epochs * len(loader)
    )
    hinge = CostHinge(model, setup.settings)
    step = TrainStep(model, optimizer, scheduler, runtime, cross_entropy_loss(), hinge)
    history = fit(
        step,
        loader,
        epochs,
        dynamic_validation(model, val, runtime),
        title="dynamic",
        resume=context.resume_file(),
        monitor=monitor,
    )
    return DynamicResult(model=model, history=history)

"""Supernet training: the sandwich rule with in-place distillation, on the shared engine.

Per batch (Yu & Huang, "Universally Slimmable Networks", ICCV 2019; BigNAS, ECCV 2020): the
highest-bit policy learns from the labels, through the engine's own forward pass; the
lowest-bit policy and ``random_policies`` random ones learn from the highest's predictions
(KL divergence, targets detached); their gradients add up into one SGD step. Everything
else (epochs, schedule, resume, progress, divergence guard) is :func:`qsearch.train.fit.fit`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qsearch.env.space import SearchSpace
from qsearch.quant.layers import QuantizerSpec, set_policy_bits
from qsearch.quant.policy import Policy
from qsearch.supernet.model import build_supernet, calibrate_all_bits, score_policy, space_choices
from qsearch.train.fit import Monitor, TrainContext, ValidationRow, fit
from qsearch.train.loop import TrainStep, build_optimizer, cosine_schedule, forward
from qsearch.train.recipe import SupernetRecipe
from qsearch.train.runtime import Runtime


class PolicySampler:
    """The lowest, the highest and random policies of a search space (torch's global RNG,
    so a resumed run draws what an uninterrupted one would)."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        n = len(space.searchable)
        a_top = [space.a_choices[-1]] * n if space.search_activations else None
        self.highest = space.policy([space.w_choices[-1]] * n, a_top)
        self.lowest = space.min_policy()

    def random(self) -> Policy:
        space, n = self.space, len(self.space.searchable)
        w = [space.w_choices[int(i)] for i in torch.randint(len(space.w_choices), (n,))]
        if not space.search_activations:
            return space.policy(w)
        a = [space.a_choices[int(i)] for i in torch.randint(len(space.a_choices), (n,))]
        return space.policy(w, a)


class SandwichLoss:
    """The task loss of supernet training (a :data:`~qsearch.train.loop.LossFn`): cross
    entropy of the highest policy's logits (computed by the engine with the model at the
    highest bits) plus the KL divergence of the lowest and random policies from them."""

    def __init__(
        self, model: nn.Module, sampler: PolicySampler, runtime: Runtime, random_policies: int
    ) -> None:
        self.model, self.sampler, self.runtime = model, sampler, runtime
        self.random_policies = random_policies

    def __call__(self, logits: Tensor, labels: Tensor, images: Tensor) -> Tensor:
        loss = F.cross_entropy(logits.float(), labels)
        target = F.softmax(logits.detach().float(), dim=1)
        students = [self.sampler.lowest]
        students += [self.sampler.random() for _ in range(self.random_policies)]
        try:
            for policy in students:
                set_policy_bits(self.model, policy)
                log_probs = F.log_softmax(forward(self.model, images, self.runtime).float(), dim=1)
                loss = loss + F.kl_div(log_probs, target, reduction="batchmean")
        finally:
            set_policy_bits(self.model, self.sampler.highest)  # the engine's next forward
        return loss


def supernet_validation(
    model: nn.Module, sampler: PolicySampler, context: TrainContext, bn_batches: int
) -> ValidationRow:
    """``val_acc`` at the highest bits and ``val_acc_lowest`` at the lowest, each after
    batch-norm re-estimation (as ``evaluator=supernet`` scores)."""
    val, bn_images = context.eval_loader("val"), context.train_loader(256)
    runtime = context.runtime

    def row() -> dict[str, float]:
        accuracy = {
            label: score_policy(model, policy, bn_images, bn_batches, val, runtime)
            for label, policy in (("val_acc", sampler.highest), ("val_acc_lowest", sampler.lowest))
        }
        set_policy_bits(model, sampler.highest)
        return accuracy

    return row


@dataclass
class SupernetResult:
    model: nn.Module
    history: list[dict[str, float]]


def train_supernet(
    float_model: nn.Module,
    space: SearchSpace,
    spec: QuantizerSpec,
    recipe: SupernetRecipe,
    context: TrainContext,
    monitor: Monitor | None = None,
) -> SupernetResult:
    """Build the supernet of ``space`` from ``float_model`` and train it with the sandwich
    rule for ``recipe.epochs`` epochs; with ``context.workdir`` set, ``last.pt`` there is
    written after every epoch and a later call continues from it."""
    torch.manual_seed(context.seed)
    runtime = context.runtime
    model = build_supernet(float_model, space_choices(space), spec)
    model = runtime.prepare(model)
    images, _ = next(iter(context.eval_loader("train")))
    calibrate_all_bits(model, images)
    sampler = PolicySampler(space)
    set_policy_bits(model, sampler.highest)
    loader = context.train_loader(recipe.batch_size)
    total_steps = max(1, recipe.epochs * len(loader))
    optimizer = build_optimizer(model, recipe)
    scheduler = cosine_schedule(optimizer, total_steps, recipe.warmup_epochs * len(loader))
    loss = SandwichLoss(model, sampler, runtime, recipe.random_policies)
    step = TrainStep(model, optimizer, scheduler, runtime, loss)
    history = fit(
        step,
        loader,
        recipe.epochs,
        supernet_validation(model, sampler, context, recipe.bn_batches),
        title=f"supernet {space.model}",
        resume=context.resume_file(),
        monitor=monitor,
    )
    return SupernetResult(model, history)

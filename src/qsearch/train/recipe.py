"""Typed training recipes: the config's ``train:`` / ``finetune:`` blocks, read once at the
command boundary so the trainers below take plain values, not a DictConfig.

The values live in YAML only (``conf/recipe/float.yaml``,
``conf/finetune_recipe/default.yaml`` and the commands' own keys); these classes have no
defaults of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from omegaconf import DictConfig


class OptimizerSettings(Protocol):
    """What :func:`~qsearch.train.loop.build_optimizer` reads (every recipe below, and the
    search evaluator's :class:`~qsearch.env.evaluator.RetrainConfig`)."""

    lr: float
    momentum: float
    nesterov: bool
    weight_decay: float


@dataclass(frozen=True)
class SgdRecipe:
    """SGD with momentum and weight decay, a cosine schedule (stepped per batch) after
    ``warmup_epochs`` of linear warm-up, for ``epochs`` epochs of ``batch_size``."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    momentum: float
    nesterov: bool
    warmup_epochs: int

    @staticmethod
    def _sgd(node: DictConfig) -> dict[str, Any]:
        return {
            "epochs": int(node.epochs),
            "batch_size": int(node.batch_size),
            "lr": float(node.lr),
            "weight_decay": float(node.weight_decay),
            "momentum": float(node.momentum),
            "nesterov": bool(node.nesterov),
            "warmup_epochs": int(node.warmup_epochs),
        }


@dataclass(frozen=True)
class FloatRecipe(SgdRecipe):
    """Float training (``train:``, ``conf/recipe/float.yaml``), with label smoothing."""

    label_smoothing: float

    @classmethod
    def from_config(cls, node: DictConfig) -> FloatRecipe:
        return cls(**cls._sgd(node), label_smoothing=float(node.label_smoothing))


@dataclass(frozen=True)
class FinetuneRecipe(SgdRecipe):
    """``qsearch finetune``'s ``finetune:`` block: the shared recipe plus label smoothing,
    the periodic regularizer ``lambda * mean(sin^2(pi w / s))`` (``lambda_max``,
    ``lambda_schedule``; :mod:`qsearch.quant.regularizer`) and distillation from the float
    model (``distill_alpha`` = 0: off)."""

    label_smoothing: float
    lambda_max: float
    lambda_schedule: str
    distill_alpha: float
    distill_temperature: float

    @classmethod
    def from_config(cls, node: DictConfig) -> FinetuneRecipe:
        regularizer, distill = node.regularizer, node.distill
        terms = {
            "label_smoothing": float(node.label_smoothing),
            "lambda_max": float(regularizer.lambda_max),
            "lambda_schedule": str(regularizer.schedule),
            "distill_alpha": float(distill.alpha),
            "distill_temperature": float(distill.temperature),
        }
        return cls(**cls._sgd(node), **terms)


@dataclass(frozen=True)
class DynamicRecipe(SgdRecipe):
    """``qsearch dynamic``'s ``finetune:`` block: the shared recipe for the network, and
    the bit controller's own learning rate."""

    controller_lr: float

    @classmethod
    def from_config(cls, node: DictConfig) -> DynamicRecipe:
        return cls(**cls._sgd(node), controller_lr=float(node.controller_lr))

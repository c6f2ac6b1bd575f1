"""Typed training recipes: the config's ``train:`` / ``finetune:`` blocks, read once at the
command boundary so the trainers below take plain values, not a DictConfig.

The values live in YAML only (``conf/recipe/float.yaml``,
``conf/finetune_recipe/default.yaml`` and the commands' own keys); these classes have no
defaults of their own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Protocol, TypeVar

from omegaconf import DictConfig, OmegaConf


class OptimizerSettings(Protocol):
    """What :func:`~qsearch.train.loop.build_optimizer` reads (every recipe below, and the
    search evaluator's :class:`~qsearch.env.evaluator.RetrainConfig`)."""

    lr: float
    momentum: float
    nesterov: bool
    weight_decay: float


R = TypeVar("R", bound="SgdRecipe")
_CONVERT: dict[str, Callable[[Any], Any]] = {"int": int, "float": float, "bool": bool, "str": str}


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

    # config keys of fields not named like them (nested blocks)
    _KEYS: ClassVar[dict[str, str]] = {}

    @classmethod
    def from_config(cls: type[R], node: DictConfig) -> R:
        """Every field read from ``node`` by its name (or its key in ``_KEYS``), converted
        to the field's type."""
        values = {}
        for spec in fields(cls):
            value = OmegaConf.select(node, cls._KEYS.get(spec.name, spec.name))
            values[spec.name] = _CONVERT[str(spec.type)](value)
        return cls(**values)


@dataclass(frozen=True)
class FloatRecipe(SgdRecipe):
    """Float training (``train:``, ``conf/recipe/float.yaml``), with label smoothing."""

    label_smoothing: float


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

    _KEYS: ClassVar[dict[str, str]] = {
        "lambda_max": "regularizer.lambda_max",
        "lambda_schedule": "regularizer.schedule",
        "distill_alpha": "distill.alpha",
        "distill_temperature": "distill.temperature",
    }


@dataclass(frozen=True)
class DynamicRecipe(SgdRecipe):
    """``qsearch dynamic``'s ``finetune:`` block: the shared recipe for the network, and
    the bit controller's own learning rate."""

    controller_lr: float


@dataclass(frozen=True)
class SupernetRecipe(SgdRecipe):
    """``evaluator=supernet``'s training (``qsearch supernet``, from the float weights): the
    sandwich rule with ``random_policies`` random policies per batch besides the lowest and
    the highest; and its scoring: batch-norm statistics re-estimated on ``bn_batches``
    training batches before every evaluation."""

    random_policies: int
    bn_batches: int

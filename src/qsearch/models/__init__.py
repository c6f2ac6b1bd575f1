"""The model zoo and the builder that fits any model to a dataset.

A model config names a callable by ``_target_`` (qsearch's own models, a torchvision
model, or a user's); :func:`build_model` passes it ``num_classes``, ``in_channels`` and
``image_size`` where its signature accepts them.
"""

from __future__ import annotations

import inspect

from hydra.utils import get_object
from omegaconf import DictConfig
from torch import nn

from qsearch.config import instantiate_checked
from qsearch.data.tensors import DatasetInfo
from qsearch.errors import UserError
from qsearch.models.inventory import LayerInfo, layer_inventory

__all__ = ["LayerInfo", "build_model", "layer_inventory", "model_inventory"]


def _dataset_kwargs(target: object, info: DatasetInfo) -> dict[str, int]:
    offered = {
        "num_classes": info.num_classes,
        "in_channels": info.in_channels,
        "image_size": info.image_size,
    }
    try:
        params = inspect.signature(target).parameters  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return {"num_classes": info.num_classes}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return {"num_classes": info.num_classes}
    return {key: value for key, value in offered.items() if key in params}


def build_model(model_cfg: DictConfig, info: DatasetInfo) -> nn.Module:
    """Instantiate ``model_cfg.arch`` for a dataset of ``info``'s shape and classes."""
    arch = model_cfg.arch
    try:
        target = get_object(arch._target_)
    except Exception as exc:
        raise UserError(f"model {model_cfg.name}: cannot import {arch._target_}") from exc
    kwargs = {k: v for k, v in _dataset_kwargs(target, info).items() if k not in arch}
    return instantiate_checked(arch, **kwargs)


def model_inventory(model: nn.Module, info: DatasetInfo) -> list[LayerInfo]:
    """The layer inventory of ``model`` on one sample of ``info``'s shape."""
    return layer_inventory(model, (info.in_channels, info.image_size, info.image_size))

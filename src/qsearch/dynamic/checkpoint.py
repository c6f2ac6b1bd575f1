"""Dynamic checkpoints: self-describing like quantized ones (``qsearch-dynamic/1``).

The file holds the ``model``, ``dataset``, ``quantizer`` and ``dynamic`` configs (YAML
text), the base policy, the static/dynamic plan, metadata and the state dict (backbone,
quantizers of every candidate, controller). Plain data and tensors only, so it loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig

from qsearch.config import freeze_config, thaw_config
from qsearch.data import dataset_shape
from qsearch.dynamic.model import DynamicQuantModel, build_dynamic
from qsearch.dynamic.settings import DynamicPlan, DynamicSettings
from qsearch.errors import UserError
from qsearch.models import build_model, model_inventory
from qsearch.models.inventory import LayerInfo
from qsearch.quant.layers import QuantizerSpec
from qsearch.quant.policy import Policy
from qsearch.utils.io import load_torch, load_weights, reading_checkpoint, save_torch

DYNAMIC_FORMAT = "qsearch-dynamic/1"
_CONFIG_KEYS = ("model", "dataset", "quantizer")


@dataclass
class DynamicCheckpoint:
    """A dynamic model rebuilt from a checkpoint file."""

    model: DynamicQuantModel
    policy: Policy  # the static base policy
    plan: DynamicPlan
    inventory: list[LayerInfo]
    config: DictConfig  # model, dataset, quantizer and dynamic configs
    meta: dict[str, Any]


def save_dynamic(
    path: str | Path,
    model: DynamicQuantModel,
    policy: Policy,
    plan: DynamicPlan,
    settings: DynamicSettings,
    cfg: DictConfig,
    meta: dict[str, Any],
) -> Path:
    """Write a dynamic checkpoint atomically (``cfg`` supplies model/dataset/quantizer)."""
    state_dict = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    config = freeze_config(cfg, _CONFIG_KEYS) + yaml.safe_dump({"dynamic": settings.as_dict()})
    return save_torch(
        path,
        {
            "format": DYNAMIC_FORMAT,
            "config": config,
            "policy": policy.to_dict(),
            "plan": plan.to_dict(),
            "meta": meta,
            "state_dict": state_dict,
        },
    )


def is_dynamic_checkpoint(blob: Any) -> bool:
    return isinstance(blob, dict) and blob.get("format") == DYNAMIC_FORMAT


def rebuild_dynamic(
    blob: dict[str, Any], source: str, data_root: str = "data", cache_dir: str = ".cache/qsearch"
) -> DynamicCheckpoint:
    """Rebuild the model of a loaded dynamic checkpoint ``blob`` (read from ``source``).

    Anything that does not fit (a malformed plan, weights of another shape) is a UserError.
    """
    with reading_checkpoint(source, "dynamic"):
        config = thaw_config(blob["config"], data_root, cache_dir)
        settings = DynamicSettings.from_config(config.dynamic)
        policy = Policy.from_dict(blob["policy"], source=source)
        plan = DynamicPlan.from_dict(blob["plan"], source=source)
        state_dict, meta = blob["state_dict"], dict(blob.get("meta") or {})
        info = dataset_shape(config.dataset)
        float_model = build_model(config.model, info)
        spec = QuantizerSpec.from_config(config.quantizer)
    inventory = model_inventory(float_model, info)
    policy.validate(inventory, str(config.model.name))
    if set(plan.static) | set(plan.dynamic) != set(policy.layers):
        raise UserError(f"{source}: the dynamic plan does not match its policy's layers")
    model = build_dynamic(float_model, inventory, policy, plan, spec, settings)
    load_weights(model, state_dict, source)
    return DynamicCheckpoint(model, policy, plan, inventory, config, meta)


def load_dynamic(
    path: str | Path, data_root: str = "data", cache_dir: str = ".cache/qsearch"
) -> DynamicCheckpoint:
    """Load and rebuild a dynamic checkpoint; a file of another kind is a UserError."""
    blob = load_torch(path)
    if not is_dynamic_checkpoint(blob):
        raise UserError(f"{path} is not a qsearch dynamic checkpoint")
    return rebuild_dynamic(blob, str(path), data_root, cache_dir)

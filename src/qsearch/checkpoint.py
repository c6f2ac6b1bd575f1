"""Checkpoints: one file layout, a ``format`` field, and one reader that dispatches on it.

============================  =====================  =====================================
``format``                    written by             rebuilt into
============================  =====================  =====================================
``qsearch-float/1``           ``qsearch train``      the float model (a 32-bit policy)
``qsearch-quant/1``           ``qsearch finetune``   the quantized model and its policy
``qsearch-dynamic/1``         ``qsearch dynamic``    the dynamic model, base policy, plan
============================  =====================  =====================================

Every file is a dict of plain data and tensors, so it loads with
``torch.load(weights_only=True)``: ``format``, ``config`` (YAML text of the ``model``,
``dataset`` and, when quantized, ``quantizer`` and ``dynamic`` configs, see
:func:`qsearch.config.freeze_config`), ``meta``, ``state_dict`` (quantizer state
included), and per format a ``policy`` and a dynamic ``plan``. A checkpoint is
self-describing: ``qsearch evaluate`` and ``qsearch export`` need nothing but the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig
from torch import nn

from qsearch.config import freeze_config, thaw_config
from qsearch.data import dataset_shape
from qsearch.dynamic.model import build_dynamic
from qsearch.dynamic.settings import DynamicPlan, DynamicSettings
from qsearch.errors import UserError
from qsearch.models import build_model, model_inventory
from qsearch.models.inventory import LayerInfo
from qsearch.quant.layers import QuantizerSpec, quantize_model
from qsearch.quant.policy import FLOAT_BITS, Policy
from qsearch.utils.io import load_torch, load_weights, reading_checkpoint, save_torch

FLOAT_FORMAT = "qsearch-float/1"
QUANT_FORMAT = "qsearch-quant/1"
DYNAMIC_FORMAT = "qsearch-dynamic/1"
KINDS = {FLOAT_FORMAT: "float", QUANT_FORMAT: "quantized", DYNAMIC_FORMAT: "dynamic"}
_QUANT_CONFIG_KEYS = ("model", "dataset", "quantizer")


@dataclass
class Checkpoint:
    """A model rebuilt from a checkpoint file.

    ``kind``: ``float``, ``quantized`` or ``dynamic``; ``policy``: the bits (32 everywhere
    for a float model, the static base policy of a dynamic one); ``plan``: which layers a
    dynamic model switches, and between which bits (None otherwise).
    """

    kind: str
    model: nn.Module
    policy: Policy
    config: DictConfig
    meta: dict[str, Any]
    plan: DynamicPlan | None = None


def checkpoint_path(value: str | Path) -> Path:
    """A checkpoint file, or a run directory holding ``model.pt``."""
    path = Path(value)
    return path / "model.pt" if path.is_dir() else path


def checkpoint_kind(blob: Any) -> str | None:
    """``float``, ``quantized`` or ``dynamic`` for a loaded checkpoint, None for anything else."""
    return KINDS.get(blob.get("format")) if isinstance(blob, dict) else None


def write_checkpoint(
    path: str | Path, fmt: str, model: nn.Module, config: str, meta: dict[str, Any], **parts: Any
) -> Path:
    """Write a checkpoint of format ``fmt`` atomically: the shared layout plus ``parts``."""
    state_dict = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    blob = {"format": fmt, "config": config, **parts, "meta": meta, "state_dict": state_dict}
    return save_torch(path, blob)


def save_quantized(
    path: str | Path, model: nn.Module, policy: Policy, cfg: DictConfig, meta: dict[str, Any]
) -> Path:
    """Write a quantized checkpoint (``cfg`` supplies model/dataset/quantizer configs)."""
    config = freeze_config(cfg, _QUANT_CONFIG_KEYS)
    return write_checkpoint(path, QUANT_FORMAT, model, config, meta, policy=policy.to_dict())


def save_dynamic(
    path: str | Path,
    model: nn.Module,
    policy: Policy,
    plan: DynamicPlan,
    settings: DynamicSettings,
    cfg: DictConfig,
    meta: dict[str, Any],
) -> Path:
    """Write a dynamic checkpoint (``cfg`` supplies model/dataset/quantizer configs)."""
    config = freeze_config(cfg, _QUANT_CONFIG_KEYS) + yaml.safe_dump(
        {"dynamic": settings.as_dict()}
    )
    parts = {"policy": policy.to_dict(), "plan": plan.to_dict()}
    return write_checkpoint(path, DYNAMIC_FORMAT, model, config, meta, **parts)


def rebuild_checkpoint(
    blob: Any, source: str | Path, data_root: str = "data", cache_dir: str = ".cache/qsearch"
) -> Checkpoint:
    """Rebuild the model of a loaded checkpoint ``blob`` (read from ``source``).

    ``data_root``/``cache_dir`` fill the stored dataset config's folders. Anything that
    does not fit (a missing entry, a policy or weights of another model) is a UserError.
    """
    kind = checkpoint_kind(blob)
    if kind is None or (kind == "float" and "config" not in blob):
        raise UserError(f"{source} is not a qsearch float, quantized or dynamic checkpoint")
    source = str(source)
    with reading_checkpoint(source, kind):
        config = thaw_config(blob["config"], data_root, cache_dir)
        if kind == "dynamic":
            settings = DynamicSettings.from_config(config.dynamic)
        if kind != "float":
            policy = Policy.from_dict(blob["policy"], source=source)
        if kind == "dynamic":
            plan = DynamicPlan.from_dict(blob["plan"], source=source)
        state_dict = blob["state_dict"]
        meta = dict(blob.get("meta") or {}) if kind == "dynamic" else dict(blob["meta"])
        info = dataset_shape(config.dataset)
        model = build_model(config.model, info)
        if kind != "float":
            spec = QuantizerSpec.from_config(config.quantizer)
    inventory = model_inventory(model, info)
    loaded = Checkpoint(kind, model, _float_policy(config, inventory), config, meta)
    if kind == "quantized":
        policy.validate(inventory, str(config.model.name))
        loaded.policy, loaded.model = policy, quantize_model(model, policy, spec)
    elif kind == "dynamic":
        policy.validate(inventory, str(config.model.name))
        if set(plan.static) | set(plan.dynamic) != set(policy.layers):
            raise UserError(f"{source}: the dynamic plan does not match its policy's layers")
        loaded.policy, loaded.plan = policy, plan
        loaded.model = build_dynamic(model, inventory, policy, plan, spec, settings)
    load_weights(loaded.model, state_dict, source)
    return loaded


def _float_policy(config: DictConfig, inventory: Sequence[LayerInfo]) -> Policy:
    """32 bits for every layer of ``inventory``: the policy of a float checkpoint."""
    names = [layer.name for layer in inventory]
    model, dataset = str(config.model.name), str(config.dataset.name)
    return Policy.uniform(model, dataset, names, FLOAT_BITS, FLOAT_BITS)


def load_checkpoint(
    path: str | Path,
    data_root: str = "data",
    cache_dir: str = ".cache/qsearch",
    kinds: Sequence[str] = tuple(KINDS.values()),
) -> Checkpoint:
    """Load and rebuild the checkpoint at ``path`` (a file, or a run directory holding
    ``model.pt``); a file of a kind not in ``kinds`` (or no checkpoint) is a UserError."""
    path = checkpoint_path(path)
    blob = load_torch(path)
    kind = checkpoint_kind(blob)
    wanted = " or ".join(kinds)
    if kind is None:
        raise UserError(f"{path} is not a qsearch {wanted} checkpoint")
    if kind not in kinds:
        raise UserError(f"{path} is a {kind} checkpoint; this needs a {wanted} one")
    return rebuild_checkpoint(blob, path, data_root, cache_dir)

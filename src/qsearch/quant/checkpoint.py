"""Quantized checkpoints: weights, quantizer state, the policy and the config to rebuild.

A quantized checkpoint is self-describing: ``qsearch evaluate`` and ``qsearch export`` need
nothing but the file. It holds the ``model``, ``dataset`` and ``quantizer`` configs
(YAML text, see :func:`qsearch.config.freeze_config`), the policy, metadata and the state
dict (quantizer steps and ranges included).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from torch import nn

from qsearch.config import freeze_config, thaw_config
from qsearch.data import dataset_shape
from qsearch.errors import UserError
from qsearch.models import build_model, model_inventory
from qsearch.quant.layers import QuantizerSpec, quantize_model
from qsearch.quant.policy import Policy
from qsearch.utils.io import load_torch, load_weights, reading_checkpoint, save_torch

QUANT_FORMAT = "qsearch-quant/1"
_CONFIG_KEYS = ("model", "dataset", "quantizer")


@dataclass
class QuantizedCheckpoint:
    """A quantized model rebuilt from a checkpoint file."""

    model: nn.Module
    policy: Policy
    config: DictConfig  # model, dataset and quantizer configs
    meta: dict[str, Any]


def save_quantized(
    path: str | Path, model: nn.Module, policy: Policy, cfg: DictConfig, meta: dict[str, Any]
) -> Path:
    """Write a quantized checkpoint atomically (``cfg`` supplies model/dataset/quantizer)."""
    state_dict = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    return save_torch(
        path,
        {
            "format": QUANT_FORMAT,
            "config": freeze_config(cfg, _CONFIG_KEYS),
            "policy": policy.to_dict(),
            "meta": meta,
            "state_dict": state_dict,
        },
    )


def is_quantized_checkpoint(blob: Any) -> bool:
    return isinstance(blob, dict) and blob.get("format") == QUANT_FORMAT


def rebuild_quantized(
    blob: dict[str, Any], source: str, data_root: str = "data", cache_dir: str = ".cache/qsearch"
) -> QuantizedCheckpoint:
    """Rebuild the model of a loaded quantized checkpoint ``blob`` (read from ``source``).

    ``data_root``/``cache_dir`` fill the stored dataset config's folders. Anything that
    does not fit (a missing entry, a policy or weights of another model) is a UserError.
    """
    with reading_checkpoint(source, "quantized"):
        config = thaw_config(blob["config"], data_root, cache_dir)
        policy = Policy.from_dict(blob["policy"], source=source)
        state_dict, meta = blob["state_dict"], dict(blob["meta"])
        info = dataset_shape(config.dataset)
        model = build_model(config.model, info)
        spec = QuantizerSpec.from_config(config.quantizer)
    policy.validate(model_inventory(model, info), str(config.model.name))
    quantize_model(model, policy, spec)
    load_weights(model, state_dict, source)
    return QuantizedCheckpoint(model=model, policy=policy, config=config, meta=meta)


def load_quantized(
    path: str | Path, data_root: str = "data", cache_dir: str = ".cache/qsearch"
) -> QuantizedCheckpoint:
    """Load and rebuild a quantized checkpoint; a file of another kind is a UserError."""
    blob = load_torch(path)
    if not is_quantized_checkpoint(blob):
        raise UserError(f"{path} is not a qsearch quantized checkpoint")
    return rebuild_quantized(blob, str(path), data_root, cache_dir)

"""Helpers the commands share: the Hydra run dir, the one (global) rich console, and the
setup of a command that trains a policy from the float model (finetune, dynamic)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import rich
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from torch import nn

from qsearch.data import DataSplits, build_data
from qsearch.models import build_model, model_inventory
from qsearch.models.inventory import LayerInfo
from qsearch.quant.layers import QuantizerSpec
from qsearch.quant.policy import Policy, resolve_policy
from qsearch.report.progress import training_progress
from qsearch.train.fit import Monitor
from qsearch.train.float_model import FloatCheckpoint, load_float_weights, train_float
from qsearch.train.runtime import Runtime, resolve_runtime

console = rich.get_console()


def run_dir() -> Path:
    """The Hydra output directory of the current job (``outputs/<command>/...``)."""
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path.cwd()


@dataclass(frozen=True)
class PolicySetup:
    """The runtime, data, (untrained) float model, its layer inventory, the requested
    policy and the quantizer of a command that trains a policy."""

    runtime: Runtime
    data: DataSplits
    float_model: nn.Module
    inventory: list[LayerInfo]
    policy: Policy
    spec: QuantizerSpec


def policy_setup(cfg: DictConfig) -> PolicySetup:
    """Resolve ``cfg``'s runtime, dataset, model, policy (``policy=`` or ``w_bits``/
    ``a_bits``) and quantizer; bad input is a UserError before anything trains."""
    runtime = resolve_runtime(cfg.runtime)
    data = build_data(cfg.dataset)
    float_model = build_model(cfg.model, data.info)
    inventory = model_inventory(float_model, data.info)
    policy = resolve_policy(
        cfg.policy,
        cfg.w_bits,
        cfg.a_bits,
        model=cfg.model.name,
        dataset=cfg.dataset.name,
        inventory=inventory,
        pin_first_last=cfg.pin_first_last,
    )
    spec = QuantizerSpec.from_config(cfg.quantizer)
    return PolicySetup(runtime, data, float_model, list(inventory), policy, spec)


def load_trained_float(cfg: DictConfig, setup: PolicySetup) -> FloatCheckpoint:
    """The float checkpoint of ``cfg`` (trained first when the cache lacks it, with a
    progress display), its weights loaded into ``setup.float_model``."""
    with training_progress() as progress:
        checkpoint = train_float(cfg, setup.data, setup.runtime, monitor=Monitor(progress))
    load_float_weights(setup.float_model, checkpoint)
    return checkpoint

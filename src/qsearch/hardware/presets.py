"""Presets: one YAML file per cost model in ``conf/hardware/``; adding one needs no code."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from qsearch.config import config_dir, group_options, instantiate_checked
from qsearch.errors import UserError
from qsearch.hardware.base import CostModel

LUT = "lut"  # needs the user's table, so it is not among the default presets


def preset_names(include_lut: bool = False) -> list[str]:
    """Every preset in ``conf/hardware/`` (``lut`` only if asked: it needs a ``path``)."""
    return [name for name in group_options("hardware") if include_lut or name != LUT]


def load_preset(name: str) -> DictConfig:
    """The config node of preset ``name`` (``conf/hardware/<name>.yaml``)."""
    options = group_options("hardware")
    if name not in options:
        raise UserError(f"unknown hardware '{name}' (choose from: {', '.join(options)})")
    node = OmegaConf.load(config_dir() / "hardware" / f"{name}.yaml")
    return OmegaConf.create({"hardware": node}).hardware  # errors name `hardware.<key>`


def build_cost_model(hardware_cfg: DictConfig | str) -> CostModel:
    """Instantiate a cost model from its config node (``cfg.hardware``) or a preset name."""
    node = load_preset(hardware_cfg) if isinstance(hardware_cfg, str) else hardware_cfg
    model = instantiate_checked(node)
    if not isinstance(model, CostModel):
        raise UserError(f"hardware '{node.get('name')}' is not a qsearch cost model")
    return model

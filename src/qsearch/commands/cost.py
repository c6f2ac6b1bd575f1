"""``qsearch cost``: a policy's cost under every hardware preset, relative to uniform 8-bit."""

from __future__ import annotations

from omegaconf import DictConfig, ListConfig

from qsearch.commands._common import console, run_dir
from qsearch.data import dataset_shape
from qsearch.errors import UserError
from qsearch.hardware import (
    CostModel,
    build_cost_model,
    cost_table,
    preset_names,
    rich_cost_table,
    rich_layer_table,
)
from qsearch.models import build_model, model_inventory
from qsearch.quant.policy import resolve_policy
from qsearch.utils.io import write_json


def presets(cfg: DictConfig) -> list[CostModel]:
    """The cost models to compare: ``cfg.presets`` plus the primary ``cfg.hardware``."""
    primary = build_cost_model(cfg.hardware)
    if cfg.presets == "all":
        names = preset_names()
    elif isinstance(cfg.presets, ListConfig):
        names = [str(name) for name in cfg.presets]
    else:
        raise UserError(f"presets must be 'all' or a list of presets, got {cfg.presets!r}")
    models = [primary if name == primary.name else build_cost_model(name) for name in names]
    return models if primary in models else [primary, *models]


def run(cfg: DictConfig) -> None:
    """Print the cost table and the primary preset's per-layer costs; write cost.json."""
    info = dataset_shape(cfg.dataset)
    inventory = model_inventory(build_model(cfg.model, info), info)
    policy = resolve_policy(
        cfg.policy,
        cfg.w_bits,
        cfg.a_bits,
        model=str(cfg.model.name),
        dataset=str(cfg.dataset.name),
        inventory=inventory,
        pin_first_last=cfg.pin_first_last,
    )
    models = presets(cfg)
    rows = cost_table(inventory, policy, models, pin_first_last=cfg.pin_first_last)
    primary = next(row for row in rows if row.preset == str(cfg.hardware.name))
    write_json(
        run_dir() / "cost.json",
        {
            "model": policy.model,
            "dataset": policy.dataset,
            "policy": policy.to_dict()["layers"],
            "reference": f"uniform 8-bit, first/last layer at {cfg.pin_first_last}",
            "primary": primary.preset,
            "presets": [row.as_dict() for row in rows],
        },
    )
    title = f"{policy.model} on {policy.dataset}: {policy.metadata.get('source', cfg.policy)}"
    console.print(rich_cost_table(rows, title, primary=primary.preset))
    console.print(rich_layer_table(primary))
    console.print(f"written: {run_dir() / 'cost.json'}")

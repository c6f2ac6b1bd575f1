"""``qsearch evaluate``: test accuracy, average bits and model size of a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from rich.table import Table
from torch import nn

from qsearch.commands._common import console, run_dir
from qsearch.commands.dynamic import evaluate_checkpoint
from qsearch.config import thaw_config
from qsearch.data import build_data, dataset_shape, eval_loader
from qsearch.dynamic.checkpoint import is_dynamic_checkpoint
from qsearch.errors import UserError
from qsearch.hardware import build_cost_model, cost_table, rich_cost_table
from qsearch.models import build_model, model_inventory
from qsearch.quant.checkpoint import is_quantized_checkpoint, rebuild_quantized
from qsearch.quant.policy import FLOAT_BITS, Policy
from qsearch.train.float_model import FLOAT_FORMAT
from qsearch.train.loop import evaluate
from qsearch.train.runtime import resolve_runtime
from qsearch.utils.io import load_torch, load_weights, reading_checkpoint, write_json


def checkpoint_path(value: str) -> Path:
    """A checkpoint file, or a run directory holding ``model.pt``."""
    path = Path(value)
    return path / "model.pt" if path.is_dir() else path


def rebuild_any_checkpoint(
    blob: Any, path: Path, data_root: str, cache_dir: str
) -> tuple[nn.Module, Policy, DictConfig, dict[str, Any]]:
    """(model, policy, config, meta) of a loaded float or quantized checkpoint (from ``path``)."""
    if is_quantized_checkpoint(blob):
        loaded = rebuild_quantized(blob, str(path), data_root, cache_dir)
        return loaded.model, loaded.policy, loaded.config, loaded.meta
    if not isinstance(blob, dict) or blob.get("format") != FLOAT_FORMAT or "config" not in blob:
        raise UserError(f"{path} is not a qsearch float or quantized checkpoint")
    with reading_checkpoint(path, "float"):
        config = thaw_config(blob["config"], data_root, cache_dir)
        state_dict, meta = blob["state_dict"], dict(blob["meta"])
        info = dataset_shape(config.dataset)
        model = build_model(config.model, info)
    load_weights(model, state_dict, path)
    names = [layer.name for layer in model_inventory(model, info)]
    policy = Policy.uniform(
        str(config.model.name), str(config.dataset.name), names, FLOAT_BITS, FLOAT_BITS
    )
    return model, policy, config, meta


def run(cfg: DictConfig) -> None:
    """Evaluate ``checkpoint`` on its dataset's test split; write evaluate.json.

    A dynamic checkpoint (``qsearch dynamic``) also reports its per-sample BitOPs.
    """
    path = checkpoint_path(str(cfg.checkpoint))
    blob = load_torch(path)
    if is_dynamic_checkpoint(blob):
        evaluate_checkpoint(blob, path, cfg)
        return
    model, policy, config, _ = rebuild_any_checkpoint(
        blob, path, str(cfg.data_root), str(cfg.cache_dir)
    )
    runtime = resolve_runtime(cfg.runtime)
    data = build_data(config.dataset)
    model = runtime.prepare(model)
    device = str(runtime.device)
    accuracy = {
        split: evaluate(model, eval_loader(data, split, device=device), runtime).accuracy
        for split in ("val", "test")
    }
    inventory = model_inventory(model, data.info)
    bits = policy.average_bits(inventory)
    size_model = build_cost_model("size")
    size = size_model.total(inventory, policy)
    float_size = size_model.total(
        inventory,
        Policy.uniform(policy.model, policy.dataset, list(policy.layers), FLOAT_BITS, FLOAT_BITS),
    )
    costs = cost_table(inventory, policy)
    report = {
        "checkpoint": str(path),
        "model": policy.model,
        "dataset": policy.dataset,
        "accuracy": accuracy,
        "average_bits": bits,
        "size_bytes": size,
        "float_size_bytes": float_size,
        "policy": policy.to_dict()["layers"],
        "cost": [row.as_dict() for row in costs],
    }
    write_json(run_dir() / "evaluate.json", report)

    table = Table(title=f"{policy.model} on {policy.dataset}", show_header=False)
    table.add_row("test accuracy", f"{accuracy['test']:.2f} %")
    table.add_row("val accuracy", f"{accuracy['val']:.2f} %")
    table.add_row(
        "weight bits", f"{bits['w_mean']:.2f} per layer, {bits['w_per_param']:.2f} per parameter"
    )
    table.add_row("activation bits", f"{bits['a_mean']:.2f} per layer")
    table.add_row(
        "weights size", f"{size / 1024:.1f} KiB ({float_size / size:.1f}x smaller than float)"
    )
    console.print(table)
    console.print(rich_cost_table(costs, "cost under every hardware preset"))
    console.print(f"checkpoint: {path}")

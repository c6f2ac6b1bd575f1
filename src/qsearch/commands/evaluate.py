"""``qsearch evaluate``: test accuracy, average bits and model size of a checkpoint."""

from __future__ import annotations

from omegaconf import DictConfig
from rich.table import Table

from qsearch.checkpoint import checkpoint_path, load_checkpoint
from qsearch.commands._common import console, run_dir
from qsearch.commands.dynamic import evaluate_checkpoint
from qsearch.data import build_data, eval_loader
from qsearch.hardware import build_cost_model, cost_table, rich_cost_table
from qsearch.models import model_inventory
from qsearch.quant.policy import FLOAT_BITS, Policy
from qsearch.train.loop import evaluate
from qsearch.train.runtime import resolve_runtime
from qsearch.utils.io import write_json


def run(cfg: DictConfig) -> None:
    """Evaluate ``checkpoint`` on its dataset's test split; write evaluate.json.

    A dynamic checkpoint (``qsearch dynamic``) also reports its per-sample BitOPs.
    """
    path = checkpoint_path(str(cfg.checkpoint))
    loaded = load_checkpoint(path, str(cfg.data_root), str(cfg.cache_dir))
    if loaded.kind == "dynamic":
        evaluate_checkpoint(loaded, path, cfg)
        return
    policy = loaded.policy
    runtime = resolve_runtime(cfg.runtime)
    data = build_data(loaded.config.dataset)
    model = runtime.prepare(loaded.model)
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

"""``qsearch supernet``: train the weight-shared multi-bit supernet of a search space.

Cached like the float model (``<cache_dir>/supernet/``), resumable (``last.pt`` there), with
a progress display. The run dir gets ``metrics.json``, ``curves.png`` and a table of the
supernet's accuracy at every uniform bitwidth of the space.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from rich.table import Table

from qsearch.commands._common import console, load_trained_float, run_dir
from qsearch.commands.search import build_space
from qsearch.errors import UserError
from qsearch.report.figures import curves_figure
from qsearch.report.progress import training_progress
from qsearch.setup import Setup
from qsearch.supernet.model import score_policy, space_choices
from qsearch.supernet.store import describe, save_supernet, supernet_dir
from qsearch.supernet.train import train_supernet
from qsearch.train.fit import Monitor, TrainContext
from qsearch.train.float_model import float_seed
from qsearch.train.recipe import SupernetRecipe
from qsearch.utils.io import write_atomic, write_json

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> None:
    """Train (or find in the cache) the supernet; write metrics.json, curves.png, model.pt."""
    if cfg.evaluator.name != "supernet":
        raise UserError("qsearch supernet trains evaluator=supernet's model: leave evaluator= out")
    setup = Setup.from_config(cfg)
    space = build_space(cfg, setup.inventory)
    choices = space_choices(space)
    recipe = SupernetRecipe.from_config(cfg.evaluator)
    directory = supernet_dir(cfg, setup.runtime, choices)
    final = directory / "model.pt"
    float_checkpoint = load_trained_float(setup)
    if final.is_file() and not cfg.force:
        log.info("supernet found in cache: %s", final)
        meta = json.loads((directory / "metrics.json").read_text())
    else:
        log.info(
            "training the supernet of %s on %s (%s, %s): %d epochs, lowest + highest + %d "
            "random policies per batch",
            cfg.model.name,
            cfg.dataset.name,
            setup.spec.name,
            describe(choices),
            recipe.epochs,
            recipe.random_policies,
        )
        directory.mkdir(parents=True, exist_ok=True)  # named by the cache key: last.pt too
        if cfg.force:
            (directory / "last.pt").unlink(missing_ok=True)
        seed = float_seed(cfg)
        context = TrainContext(setup.data, setup.runtime, cfg.dataset, seed, workdir=directory)
        with training_progress() as progress:
            result = train_supernet(
                setup.float_model, space, setup.spec, recipe, context, Monitor(progress)
            )
        bn_images, val = context.train_loader(256), context.eval_loader("val")
        uniform = {
            bits: score_policy(
                result.model, space.uniform(bits), bn_images, recipe.bn_batches, val, setup.runtime
            )
            for bits in space.w_choices
            if not space.search_activations or bits in space.a_choices
        }
        meta = {
            "model": cfg.model.name,
            "dataset": cfg.dataset.name,
            "quantizer": setup.spec.name,
            "choices": describe(choices),
            "epochs": recipe.epochs,
            "train_seconds": sum(row["seconds"] for row in result.history),
            "float_val_acc": float_checkpoint.meta["val_acc"],
            "uniform_val_acc": {str(bits): acc for bits, acc in uniform.items()},
            "history": result.history,
        }
        save_supernet(final, result.model, cfg, choices, meta)
        (directory / "last.pt").unlink(missing_ok=True)
    _write_run_dir(final, meta)


def _write_run_dir(final: Path, meta: dict[str, Any]) -> None:
    """Copy the supernet and its metrics into the run dir; print its uniform accuracies."""
    out = run_dir()
    write_atomic(out / "model.pt", lambda tmp: shutil.copyfile(final, tmp))
    write_json(out / "metrics.json", meta)
    curves_figure(
        out / "curves.png",
        meta["history"],
        f"supernet {meta['model']} on {meta['dataset']} ({meta['quantizer']}, {meta['choices']})",
    )
    table = Table(title=f"supernet {meta['model']} on {meta['dataset']}: uniform policies")
    table.add_column("bits (searched layers)")
    table.add_column("val acc %", justify="right")
    for bits, accuracy in meta["uniform_val_acc"].items():
        table.add_row(bits, f"{accuracy:.2f}")
    table.add_row("float", f"{meta['float_val_acc']:.2f}")
    console.print(table)
    console.print(
        f"trained {meta['epochs']} epochs in {meta['train_seconds']:.0f} s; cache: {final}"
    )
    console.print(f"output: {out}  (next: qsearch search evaluator=supernet <same overrides>)")

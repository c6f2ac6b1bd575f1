"""``qsearch train``: float training, cached by model + dataset + seed + recipe."""

from __future__ import annotations

import shutil

from omegaconf import DictConfig
from rich.table import Table

from qsearch.commands._common import console, load_trained_float, run_dir
from qsearch.report.figures import curves_figure
from qsearch.setup import Setup
from qsearch.utils.io import write_atomic


def run(cfg: DictConfig) -> None:
    """Train (or fetch from the cache) the float model; copy it into the run dir, with
    its metrics and a plot of its training curves."""
    setup = Setup.from_config(cfg)
    runtime = setup.runtime
    checkpoint = load_trained_float(setup, force=bool(cfg.force))
    out = run_dir()
    for name, source in (
        ("model.pt", checkpoint.path),
        ("metrics.json", checkpoint.directory / "metrics.json"),
    ):
        write_atomic(out / name, lambda tmp, source=source: shutil.copyfile(source, tmp))

    meta = checkpoint.meta
    curves_figure(
        out / "curves.png",
        checkpoint.history,
        f"float {meta['model']} on {meta['dataset']} (seed {meta['seed']})",
    )
    table = Table(title=f"float {meta['model']} on {meta['dataset']}", show_header=False)
    table.add_row("val accuracy", f"{meta['val_acc']:.2f} %")
    table.add_row("test accuracy", f"{meta['test_acc']:.2f} %")
    table.add_row("epochs", str(meta["epochs"]))
    table.add_row("training time", f"{meta['train_seconds']:.0f} s")
    table.add_row("device / bf16", f"{runtime.device} / {runtime.bf16}")
    table.add_row("checkpoint", str(out / "model.pt"))
    table.add_row("cache", str(checkpoint.path))
    console.print(table)

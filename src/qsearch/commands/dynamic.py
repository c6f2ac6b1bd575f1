"""``qsearch dynamic``: instance-aware dynamic quantization (Liu et al., CVPR 2022).

Trains the dynamic network and its bit controller from the float checkpoint, then reports
test accuracy, the distribution of per-sample BitOPs, the bits each layer chose, and
whether harder samples (higher float loss) got more bits. :func:`evaluate_checkpoint` is
what ``qsearch evaluate`` runs on a dynamic checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from torch import Tensor

from qsearch.checkpoint import Checkpoint, save_dynamic
from qsearch.commands._common import console, load_trained_float, run_dir
from qsearch.data import build_data, eval_loader
from qsearch.dynamic.model import DynamicQuantModel
from qsearch.dynamic.report import hardness, layer_table, summarize, summary_table
from qsearch.dynamic.settings import DynamicSettings, plan_dynamic
from qsearch.dynamic.train import (
    DynamicEval,
    DynamicSetup,
    evaluate_dynamic,
    per_sample_losses,
    train_dynamic,
)
from qsearch.report.figures import dynamic_figure
from qsearch.report.progress import training_progress
from qsearch.setup import Setup
from qsearch.train.fit import Monitor, TrainContext
from qsearch.train.recipe import DynamicRecipe
from qsearch.train.runtime import resolve_runtime
from qsearch.utils.io import write_json

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> None:
    """Train network and controller; write model.pt, metrics.json and dynamic.png."""
    settings = DynamicSettings.from_config(cfg.dynamic)
    recipe = DynamicRecipe.from_config(cfg.finetune)
    common = Setup.from_config(cfg)
    policy, spec = common.policy(), common.spec
    plan = plan_dynamic(policy, settings, spec, static_last=cfg.pin_first_last is not None)
    float_checkpoint = load_trained_float(common)
    runtime, data, float_model, inventory = (
        common.runtime,
        common.data,
        common.float_model,
        common.inventory,
    )
    log.info(
        "dynamic %s on %s with %s: %d dynamic layers, candidates %s around %s, target %.2fx",
        cfg.model.name,
        cfg.dataset.name,
        spec.name,
        len(plan.dynamic),
        list(settings.offsets),
        policy.key(),
        settings.target,
    )

    out = run_dir()
    setup = DynamicSetup(inventory, policy, plan, spec, settings)
    context = TrainContext(data, runtime, cfg.dataset, int(cfg.seed), workdir=out)
    with training_progress() as progress:
        result = train_dynamic(float_model, setup, recipe, context, Monitor(progress))
    test_loader = context.eval_loader("test")
    test = evaluate_dynamic(result.model, test_loader, runtime)
    float_losses = per_sample_losses(runtime.prepare(float_model), test_loader, runtime)
    val = evaluate_dynamic(result.model, context.eval_loader("val"), runtime)
    meta: dict[str, Any] = {
        "accuracy": {
            "float_val": float_checkpoint.meta["val_acc"],
            "float_test": float_checkpoint.meta["test_acc"],
            "val": val.accuracy,
            "test": test.accuracy,
        },
        **_report(setup, result.model, test, float_losses),
        "seed": int(cfg.seed),
        "float_checkpoint": str(float_checkpoint.path),
        "history": result.history,
    }
    save_dynamic(out / "model.pt", result.model, policy, plan, settings, cfg, meta)
    write_json(out / "metrics.json", meta)
    dynamic_figure(
        out / "dynamic.png",
        float_losses,
        test.relative,
        f"{cfg.model.name} on {cfg.dataset.name}: {spec.name}, candidates "
        f"{list(settings.offsets)} around {policy.key()}",
    )
    (out / "last.pt").unlink(missing_ok=True)
    _print(meta["test"], f"{cfg.model.name} on {cfg.dataset.name}: dynamic {spec.name}")
    h = meta["hardness"]
    console.print(
        f"float test accuracy {meta['accuracy']['float_test']:.2f} %; harder samples "
        f"(top quarter by float loss) {h['hardest_quarter']:.3f}x BitOPs, easiest quarter "
        f"{h['easiest_quarter']:.3f}x"
        + ("" if h["spearman"] is None else f", Spearman {h['spearman']:+.3f}")
    )
    console.print(f"output: {out}")


def _report(
    setup: DynamicSetup, model: DynamicQuantModel, test: DynamicEval, float_losses: Tensor
) -> dict[str, Any]:
    """The test split's summary, whether harder samples got more bits, the static base
    policy's BitOPs, the controller's MACs and the settings."""
    return {
        "test": summarize(test, setup.plan),
        "hardness": hardness(test, float_losses),
        "static_bitops": model.cost.reference,
        "controller_macs": model.controller.macs(),
        "base_policy": setup.base.key(),
        "dynamic": setup.settings.as_dict(),
        "quantizer": setup.spec.name,
    }


def _print(summary: dict[str, Any], title: str) -> None:
    console.print(summary_table(summary, title))
    console.print(layer_table(summary))


def evaluate_checkpoint(loaded: Checkpoint, path: Path, cfg: DictConfig) -> None:
    """``qsearch evaluate`` of a dynamic checkpoint: accuracy, per-sample BitOPs, bits per
    layer on the test split; writes evaluate.json."""
    assert isinstance(loaded.model, DynamicQuantModel) and loaded.plan is not None
    runtime = resolve_runtime(cfg.runtime)
    data = build_data(loaded.config.dataset)
    model = runtime.prepare(loaded.model)
    device = str(runtime.device)
    results = {
        split: evaluate_dynamic(model, eval_loader(data, split, device=device), runtime)  # type: ignore[arg-type]
        for split in ("val", "test")
    }
    summary = summarize(results["test"], loaded.plan)
    report = {
        "checkpoint": str(path),
        "model": loaded.policy.model,
        "dataset": loaded.policy.dataset,
        "accuracy": {split: result.accuracy for split, result in results.items()},
        "test": summary,
        "static_bitops": loaded.model.cost.reference,
        "base_policy": loaded.policy.key(),
        "plan": loaded.plan.to_dict(),
    }
    write_json(run_dir() / "evaluate.json", report)
    _print(summary, f"{loaded.policy.model} on {loaded.policy.dataset}: dynamic checkpoint")
    console.print(f"val accuracy {results['val'].accuracy:.2f} %")
    console.print(f"checkpoint: {path}")

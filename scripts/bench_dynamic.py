"""Dynamic-quantization benchmark: instance-aware dynamic bits vs static uniform bits.

    python scripts/bench_dynamic.py                         # both pairs, seeds 0, 1, 2
    python scripts/bench_dynamic.py --only lenet5 --seeds 0
    python scripts/bench_dynamic.py --force                 # re-run cases already saved

Liu et al. (CVPR 2022) report, on ResNet-20/CIFAR-10, +0.43 / +0.26 top-1 over static
DoReFa / PACT at similar BitOPs. Here, per pair and seed, from the same cached float
checkpoint, with the same quantizer (LSQ), training data, epochs, batch and lr:

- static: uniform b-bit (first and last layer at 8 bits), fine-tuned with plain cross
  entropy (no periodic regularizer, no distillation: the dynamic run has neither);
- dynamic: `qsearch dynamic`'s training with candidates {b-1, b, b+1} per layer and the
  BitOPs target 1.0, i.e. on average no more BitOPs than the static model (the hinge only
  pushes down, so the dynamic model may end up cheaper; its measured BitOPs are reported).

The schedule is short so that everything fits ~30 min on 2 CPU cores: one epoch, and on
CIFAR-10 a fixed random training subset (the same for both methods). Test accuracy is on
the full test set; the per-epoch validation uses a 1,000-sample subset. Each finished case
is saved to benchmarks/dynamic.json at once and skipped by the next run (resumable).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from collections.abc import Iterator
from typing import Any

import torch
from omegaconf import DictConfig

from _bench import load_json, markdown_table, save_json, update_doc_section
from qsearch.config import job_config
from qsearch.data import DataSplits, eval_loader
from qsearch.dynamic.report import hardness
from qsearch.dynamic.settings import DynamicSettings, plan_dynamic
from qsearch.dynamic.train import DynamicSetup, evaluate_dynamic, per_sample_losses, train_dynamic
from qsearch.errors import UserError
from qsearch.setup import Setup
from qsearch.train.finetune import finetune
from qsearch.train.fit import Monitor, TrainContext
from qsearch.train.loop import evaluate
from qsearch.train.recipe import DynamicRecipe, FinetuneRecipe
from qsearch.train.runtime import Runtime


@dataclasses.dataclass(frozen=True)
class Pair:
    model: str
    dataset: str
    bits: int  # base (static) bits of weights and activations
    epochs: int
    train_subset: int | None  # training samples (None: the whole train split)
    compile: bool  # runtime.compile: fused fake quantizers (pays off on resnet20)


PAIRS = {
    "lenet5-mnist-w3a3": Pair("lenet5", "mnist", 3, 1, None, False),
    "resnet20-cifar10-w3a3": Pair("resnet20", "cifar10", 3, 1, 15360, True),
}
VAL_SUBSET = 1000
FLOAT_SEED = 0  # every seed starts from the same float checkpoint (the cached one)


def _configs(pair: Pair) -> tuple[DictConfig, DictConfig]:
    """(dynamic config, finetune config) with the same recipe."""
    common = [
        f"model={pair.model}",
        f"dataset={pair.dataset}",
        f"w_bits={pair.bits}",
        f"a_bits={pair.bits}",
        f"seed={FLOAT_SEED}",
        f"finetune.epochs={pair.epochs}",
        f"runtime.compile={pair.compile}",
    ]
    dynamic = job_config("dynamic", [*common, "dynamic.target=1.0"])
    static = job_config(
        "finetune", [*common, "finetune.regularizer.lambda_max=0", "finetune.distill.alpha=0"]
    )
    for key in ("epochs", "batch_size", "lr", "weight_decay", "momentum", "nesterov"):
        assert dynamic.finetune[key] == static.finetune[key], key
    return dynamic, static


def _subset(data: DataSplits, train: int | None, val: int, seed: int) -> DataSplits:
    """Fixed random subsets of the train and val splits (independent of the run's seed).

    The val subset stands in for the test split too: fine-tuning evaluates its test split
    before and after, which the benchmark does not use (it tests on the full split).
    """
    generator = torch.Generator().manual_seed(seed)
    train_split = data.train
    if train is not None:
        train_split = data.train.subset(
            torch.randperm(len(data.train), generator=generator)[:train]
        )
    val_split = data.val.subset(torch.randperm(len(data.val), generator=generator)[:val])
    return dataclasses.replace(data, train=train_split, val=val_split, test=val_split)


def run_pair(name: str, seed: int, methods: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Train and test the ``methods`` ("static", "dynamic") of one pair and seed; yields
    ``(method, result row)`` as each finishes."""
    pair = PAIRS[name]
    dynamic_cfg, static_cfg = _configs(pair)
    setup = Setup.from_config(dynamic_cfg)
    runtime = setup.runtime
    checkpoint = setup.cached_float_checkpoint()
    if checkpoint is None:
        reason = f"no cached float checkpoint (`qsearch train model={pair.model} ...`)"
        yield from ((m, {"skipped": reason}) for m in methods)
        return
    try:
        full = setup.data
    except UserError as exc:
        yield from ((m, {"skipped": str(exc)}) for m in methods)
        return
    data = _subset(full, pair.train_subset, VAL_SUBSET, seed=0)
    test = eval_loader(full, "test", device=str(runtime.device))
    float_model, inventory = setup.float_model, setup.inventory
    policy, spec = setup.policy(), setup.spec  # uniform pair.bits (w_bits= / a_bits=)
    common = {
        "pair": name,
        "seed": seed,
        "float_test": checkpoint.meta["test_acc"],
        "epochs": pair.epochs,
        "train_samples": len(data.train),
        "steps": pair.epochs * (len(data.train) // int(dynamic_cfg.finetune.batch_size)),
        "quantizer": spec.name,
        "base_policy": policy.key(),
    }
    for method in methods:
        start = time.perf_counter()
        if method == "static":
            row = _static(float_model, policy, spec, data, runtime, static_cfg, test, seed)
        else:
            row = _dynamic(
                float_model, inventory, policy, spec, data, runtime, dynamic_cfg, test, seed
            )
            row.update(_hardness(float_model, runtime, test, row.pop("_eval")))
        row = {**common, "method": method, **row, "seconds": round(time.perf_counter() - start)}
        print(row, flush=True)
        yield method, row


def _static(float_model, policy, spec, data, runtime, cfg, test, seed: int) -> dict[str, Any]:
    context = TrainContext(data, runtime, cfg.dataset, seed)
    result = finetune(
        float_model,
        policy,
        spec,
        FinetuneRecipe.from_config(cfg.finetune),
        context,
        Monitor(log=False),
    )
    return {"test_acc": evaluate(result.model, test, runtime).accuracy, "relative_bitops": 1.0}


def _dynamic(
    float_model, inventory, policy, spec, data, runtime, cfg, test, seed: int
) -> dict[str, Any]:
    settings = DynamicSettings.from_config(cfg.dynamic)
    plan = plan_dynamic(policy, settings, spec, static_last=cfg.pin_first_last is not None)
    setup = DynamicSetup(inventory, policy, plan, spec, settings)
    context = TrainContext(data, runtime, cfg.dataset, seed)
    result = train_dynamic(
        float_model, setup, DynamicRecipe.from_config(cfg.finetune), context, Monitor(log=False)
    )
    measured = evaluate_dynamic(result.model, test, runtime)
    shares = measured.choices.flatten()
    return {
        "_eval": measured,
        "test_acc": measured.accuracy,
        "relative_bitops": measured.mean_cost,
        "relative_bitops_p5": float(torch.quantile(measured.relative.double(), 0.05)),
        "relative_bitops_p95": float(torch.quantile(measured.relative.double(), 0.95)),
        "choice_shares": [float((shares == k).double().mean()) for k in range(plan.choices)],
        "train_cost_last_epoch": result.history[-1]["train_cost"],
        "target": settings.target,
        "alpha": settings.alpha,
    }


def _hardness(float_model, runtime: Runtime, test, measured) -> dict[str, Any]:
    losses = per_sample_losses(runtime.prepare(float_model), test, runtime)
    return hardness(measured, losses)


def _mean(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def report(rows: dict[str, dict]) -> str:
    done = [r for r in rows.values() if "test_acc" in r]
    keyed = {(r["pair"], r["seed"], r["method"]): r for r in done}
    table, summary = [], []
    for name in PAIRS:
        seeds = sorted({s for p, s, _ in keyed if p == name})
        deltas, dyn_costs = [], []
        for seed in seeds:
            static, dynamic = keyed.get((name, seed, "static")), keyed.get((name, seed, "dynamic"))
            if static is None or dynamic is None:
                continue
            delta = dynamic["test_acc"] - static["test_acc"]
            deltas.append(delta)
            dyn_costs.append(dynamic["relative_bitops"])
            spearman = dynamic["spearman"]
            table.append(
                [
                    name,
                    f"{dynamic['steps']} steps ({dynamic['train_samples']} samples)",
                    seed,
                    f"{static['float_test']:.2f}",
                    f"{static['test_acc']:.2f}",
                    f"{dynamic['test_acc']:.2f}",
                    f"{delta:+.2f}",
                    f"{dynamic['relative_bitops']:.3f}x "
                    f"({dynamic['relative_bitops_p5']:.2f}-{dynamic['relative_bitops_p95']:.2f})",
                    f"{dynamic['easiest_quarter']:.3f}x / {dynamic['hardest_quarter']:.3f}x",
                    "n/a" if spearman is None else f"{spearman:+.2f}",
                    f"{static['seconds']:.0f} / {dynamic['seconds']:.0f} s",
                ]
            )
        if deltas:
            summary.append(
                f"- {name}: dynamic - static = {_mean(deltas)} points over {len(deltas)} "
                f"seed(s), at {_mean(dyn_costs)}x the static BitOPs."
            )
    text = [
        "## Dynamic quantization (`python scripts/bench_dynamic.py`)",
        "",
        "Instance-aware dynamic bits (Liu et al., CVPR 2022; `qsearch dynamic`, LSQ, "
        "candidates {b-1, b, b+1}, BitOPs target 1.0x) against static uniform b-bit LSQ "
        "(first and last layer at 8 bits in both), from the same float checkpoint with "
        "the same data, epochs, batch and lr. **Short schedule** to fit a 2-core CPU: one "
        "epoch; on CIFAR-10 a fixed random training subset. Test accuracy in % on the "
        "full test set; BitOPs relative to the static model (mean, and 5th-95th percentile "
        "over test samples); easy / hard = mean BitOPs of the quarter of test samples with "
        "the lowest / highest loss under the float model; Spearman = rank correlation "
        "between that loss and a sample's BitOPs. Paper: +0.26..+0.43 on "
        "ResNet-20/CIFAR-10 at similar BitOPs (full training).",
        "",
        markdown_table(
            [
                "pair",
                "training",
                "seed",
                "float",
                "static",
                "dynamic",
                "Δ",
                "dynamic BitOPs",
                "easy / hard",
                "Spearman",
                "time static / dynamic",
            ],
            table,
        ),
        "",
        *summary,
    ]
    rhos = [r["spearman"] for r in done if r["method"] == "dynamic" and r["spearman"] is not None]
    if rhos and max(abs(rho) for rho in rhos) < 0.2:
        text += [
            "",
            "In no run did harder samples get clearly more bits (largest |Spearman| "
            f"{max(abs(rho) for rho in rhos):.2f}): on this schedule "
            "the controller learns a budget, not a per-sample policy, so these rows measure "
            "the cost of training with mixed bits rather than the paper's effect.",
        ]
    skipped = [r for r in rows.values() if "skipped" in r]
    if skipped:
        text += ["", *(f"- {r['case']} skipped: {r['skipped']}" for r in skipped)]
    return "\n".join(text)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default="", help="substring filter on pair names")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    parser.add_argument("--force", action="store_true", help="re-run cases already saved")
    args = parser.parse_args()
    rows: dict[str, dict] = {r["case"]: r for r in load_json("dynamic").get("rows", [])}
    for name in PAIRS:
        if args.only not in name:
            continue
        for seed in (int(s) for s in args.seeds.split(",")):
            cases = {m: f"{name}-s{seed}-{m}" for m in ("static", "dynamic")}
            todo = [m for m, c in cases.items() if args.force or "test_acc" not in rows.get(c, {})]
            if not todo:
                continue
            for method, row in run_pair(name, seed, todo):
                rows[cases[method]] = {"case": cases[method], **row}
                save_json("dynamic", {"rows": list(rows.values())})
    update_doc_section("dynamic", report(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

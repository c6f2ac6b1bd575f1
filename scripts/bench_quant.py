"""Quantization benchmark: LSQ fine-tuning accuracy, the periodic regularizer, LSQ overhead.

    python scripts/bench_quant.py                      # every case (~1 h on 2 CPU cores)
    python scripts/bench_quant.py --only lenet5-mnist  # one group of cases
    python scripts/bench_quant.py --only overhead
    python scripts/bench_quant.py --only step-init     # LSQ's initial step, untrained
    python scripts/bench_quant.py --only eval-overhead # quantized vs float evaluation

Accuracy: `qsearch finetune`'s recipe (LSQ, periodic regularizer on, the dataset's default
distillation: on for CIFAR-10) from the cached float checkpoint, first and last layer at
8 bits, the dataset's default fine-tune epochs unless --resnet-epochs says otherwise; test
accuracy before and after, and the loss against float. Regularizer: the same case with
lambda_max=0. Overhead: the time of a training step of the LSQ W4A4 model over the float
model's, same batch, alternating repeats in one run (median of 5); and, where brevitas is
installed, our LSQ conv against brevitas's QuantConv2d at the same bits. Step init: the
accuracy right after calibration with LSQ's two initial activation steps.
Results merge into benchmarks/quant.json by case as each one finishes, so groups can be run
separately and a killed run keeps the cases it completed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from omegaconf import DictConfig

from _bench import load_json, markdown_table, save_json, update_doc_section
from qsearch.config import job_config
from qsearch.data import eval_loader, train_loader
from qsearch.errors import UserError
from qsearch.quant.layers import QuantizerSpec
from qsearch.setup import Setup
from qsearch.train.finetune import build_quantized, finetune
from qsearch.train.fit import TrainContext
from qsearch.train.loop import (
    TrainStep,
    build_optimizer,
    cross_entropy_loss,
    evaluate,
    train_one_epoch,
)
from qsearch.train.recipe import FinetuneRecipe

# case name: (model, dataset, w_bits, a_bits, regularizer on, target loss in points or None)
CASES = {
    "lenet5-mnist-w4a4": ("lenet5", "mnist", 4, 4, True, 0.3),
    "lenet5-mnist-w3a3": ("lenet5", "mnist", 3, 3, True, None),
    "lenet5-mnist-w2a3": ("lenet5", "mnist", 2, 3, True, None),
    "lenet5-mnist-w2a2": ("lenet5", "mnist", 2, 2, True, None),
    "lenet5-mnist-w2a2-noreg": ("lenet5", "mnist", 2, 2, False, None),
    "lenet5-mnist-w3a3-noreg": ("lenet5", "mnist", 3, 3, False, None),
    "resnet20-cifar10-w4a4": ("resnet20", "cifar10", 4, 4, True, 1.0),
    "resnet20-cifar10-w3a3": ("resnet20", "cifar10", 3, 3, True, 1.5),  # issue 21's targets
    "resnet20-cifar10-w2a2": ("resnet20", "cifar10", 2, 2, True, 4.0),
    "resnet20-cifar10-w3a3-noreg": ("resnet20", "cifar10", 3, 3, False, None),
}
OVERHEAD = (("lenet5", "mnist"), ("resnet20", "cifar10"))
# LSQ's initial activation step, calibrated and not trained: (model, dataset, w, a)
STEP_INIT = [("resnet20", "cifar10", w, a) for w, a in ((8, 2), (8, 3), (8, 4), (3, 3), (2, 2))]
STEP_INIT += [("lenet5", "mnist", 8, 2), ("lenet5", "mnist", 2, 2)]


def finetune_case(name: str, resnet_epochs: int | None, seed: int) -> dict:
    model_name, dataset, w, a, regularize, target = CASES[name]
    overrides = [
        f"model={model_name}",
        f"dataset={dataset}",
        f"w_bits={w}",
        f"a_bits={a}",
        f"seed={seed}",
    ]
    if not regularize:
        overrides.append("finetune.regularizer.lambda_max=0")
    if model_name == "resnet20":
        overrides.append("runtime.compile=true")  # ~2x faster LSQ steps (see overhead table)
        if resnet_epochs is not None:
            overrides.append(f"finetune.epochs={resnet_epochs}")
    setup = Setup.from_config(job_config("finetune", overrides))
    cfg, runtime = setup.cfg, setup.runtime
    try:
        data = setup.data
    except UserError as exc:
        return {"case": name, "skipped": str(exc)}
    checkpoint = setup.float_checkpoint()
    policy = setup.policy()  # uniform w/a bits (w_bits= / a_bits=)
    start = time.perf_counter()
    result = finetune(
        setup.float_model,
        policy,
        setup.spec,
        FinetuneRecipe.from_config(cfg.finetune),
        TrainContext(data, runtime, cfg.dataset, seed),
    )
    float_test = checkpoint.meta["test_acc"]
    loss = float_test - result.accuracy["after_test"]
    return {
        "case": name,
        "model": model_name,
        "dataset": dataset,
        "w_bits": w,
        "a_bits": a,
        "regularizer": regularize,
        "epochs": int(cfg.finetune.epochs),
        "seed": seed,
        "float_test": round(float_test, 2),
        "before_test": round(result.accuracy["before_test"], 2),
        "after_test": round(result.accuracy["after_test"], 2),
        "loss": round(loss, 2),
        "target_loss": target,
        "meets_target": None if target is None else loss <= target,
        "seconds": round(time.perf_counter() - start, 1),
        "bf16": runtime.bf16,
        "distill": float(cfg.finetune.distill.alpha),
        "step_init": str(cfg.quantizer.activation.get("step_init", "lsq")),
    }


def step_init_row(model_name: str, dataset: str, w: int, a: int) -> dict:
    """Test accuracy right after calibration (no training) with LSQ's activation steps at
    the paper's ``2 <|x|> / sqrt(Qp)`` and at the least-MSE step (``step_init``)."""
    row: dict = {"case": f"step-init-{model_name}-{dataset}-w{w}a{a}", "model": model_name}
    row |= {"dataset": dataset, "w_bits": w, "a_bits": a}
    for step_init in ("lsq", "mse"):
        overrides = [f"model={model_name}", f"dataset={dataset}", f"w_bits={w}", f"a_bits={a}"]
        overrides.append(f"quantizer.activation.step_init={step_init}")
        setup = Setup.from_config(job_config("finetune", overrides))
        try:
            data = setup.data
        except UserError as exc:
            return {"case": row["case"], "skipped": str(exc)}
        row["float_test"] = round(setup.float_checkpoint().meta["test_acc"], 2)
        model = build_quantized(setup.float_model, setup.policy(), setup.spec, data, setup.runtime)
        loader = eval_loader(data, "test", batch_size=500, device=str(setup.runtime.device))
        row[step_init] = round(evaluate(model, loader, setup.runtime).accuracy, 2)
    return row


def _float_and_quantized(cfg: DictConfig) -> tuple[Setup, torch.nn.Module, torch.nn.Module]:
    """``cfg``'s setup, its float model and a calibrated quantized copy of it.

    Raises:
        UserError: the dataset is not available here.
    """
    setup = Setup.from_config(cfg)
    data, runtime = setup.data, setup.runtime
    quantized = build_quantized(setup.float_model, setup.policy(), setup.spec, data, runtime)
    return setup, runtime.prepare(setup.float_model), quantized


def eval_overhead_row(model_name: str, dataset: str, w: int, a: int) -> dict:
    """Evaluation forward (batch 512, 10 batches) of the WwAa LSQ model / the float model,
    same run, alternating repeats; ``autograd_ms``: the same quantized forward with
    autograd recording, i.e. the out-of-place straight-through chain, which is what every
    evaluation ran before the in-place no-grad path (2026-11-29)."""
    case = f"eval-overhead-{model_name}-w{w}a{a}"
    overrides = [f"model={model_name}", f"dataset={dataset}", f"w_bits={w}", f"a_bits={a}"]
    try:
        setup, float_model, quantized = _float_and_quantized(
            job_config("finetune", [*overrides, "runtime.precision=fp32"])
        )
    except UserError as exc:
        return {"case": case, "skipped": str(exc)}
    device = str(setup.runtime.device)
    images, _ = next(iter(eval_loader(setup.data, "val", batch_size=512, device=device)))

    def seconds(model: torch.nn.Module, grad: bool) -> float:
        start = time.perf_counter()
        with torch.set_grad_enabled(grad):
            for _ in range(10):
                model(images)
        return (time.perf_counter() - start) / 10

    runs = {"float": (float_model.eval(), False), "lsq": (quantized.eval(), False)}
    runs["autograd"] = (quantized, True)
    times: dict[str, list[float]] = {key: [] for key in runs}
    for _ in range(3):
        for key, (model, grad) in runs.items():
            times[key].append(seconds(model, grad))
    ms = {key: 1000 * statistics.median(values) for key, values in times.items()}
    return {
        "case": case,
        "model": model_name,
        "w_bits": w,
        "a_bits": a,
        "threads": torch.get_num_threads(),
        "float_ms": round(ms["float"], 1),
        "lsq_ms": round(ms["lsq"], 1),
        "autograd_ms": round(ms["autograd"], 1),
        "ratio": round(ms["lsq"] / ms["float"], 3),
        "autograd_ratio": round(ms["autograd"] / ms["float"], 3),
    }


def _step_seconds(model, batch, optimizer, runtime, steps: int) -> float:
    start = time.perf_counter()
    step = TrainStep(model, optimizer, None, runtime, cross_entropy_loss())
    train_one_epoch(step, [batch] * steps)
    return (time.perf_counter() - start) / steps


def overhead_row(model_name: str, dataset: str, precision: str, compiled: bool) -> dict:
    """LSQ W4A4 step time / float step time, same batch, alternating repeats."""
    case = f"overhead-{model_name}-{precision}" + ("-compiled" if compiled else "")
    cfg = job_config(
        "finetune",
        [
            f"model={model_name}",
            f"dataset={dataset}",
            "w_bits=4",
            "a_bits=4",
            f"runtime.precision={precision}",
            f"runtime.compile={compiled}",
        ],
    )
    torch.manual_seed(0)  # the float model's initialization
    try:
        setup, float_model, quantized = _float_and_quantized(cfg)
    except UserError as exc:
        return {"case": case, "skipped": str(exc)}
    runtime, data = setup.runtime, setup.data
    batch = next(iter(train_loader(data, cfg.dataset, 128, 0, str(runtime.device))))
    models = {"float": float_model, "lsq": quantized}
    optimizers = {
        k: build_optimizer(m, FinetuneRecipe.from_config(cfg.finetune)) for k, m in models.items()
    }
    times: dict[str, list[float]] = {"float": [], "lsq": []}
    steps = 20 if model_name == "lenet5" else 5
    for key in models:  # warm-up
        _step_seconds(models[key], batch, optimizers[key], runtime, 2)
    for _ in range(5):
        for key in models:
            times[key].append(_step_seconds(models[key], batch, optimizers[key], runtime, steps))
    float_ms, lsq_ms = (1000 * statistics.median(times[k]) for k in ("float", "lsq"))
    return {
        "case": case,
        "model": model_name,
        "precision": precision,
        "compiled": compiled,
        "bf16": runtime.bf16,
        "float_ms": round(float_ms, 2),
        "lsq_ms": round(lsq_ms, 2),
        "ratio": round(lsq_ms / float_ms, 3),
        "meets_target": lsq_ms / float_ms <= 1.3,
    }


def brevitas_row() -> dict:
    """Our LSQ QuantConv2d vs brevitas's QuantConv2d: forward + backward, same shapes, 4 bits."""
    try:
        import brevitas.nn as qnn
        from brevitas.quant import Int8ActPerTensorFloat, Int8WeightPerTensorFloat
    except ImportError:
        return {"case": "brevitas", "skipped": "brevitas is not installed (pip install brevitas)"}
    from qsearch.quant.layers import QuantConv2d, quantize_model
    from qsearch.quant.policy import Policy

    torch.manual_seed(0)
    x = torch.randn(128, 64, 16, 16).relu()
    ours = torch.nn.Sequential(torch.nn.Conv2d(64, 64, 3, padding=1, bias=False))
    spec = QuantizerSpec.from_config(job_config("finetune").quantizer)
    quantize_model(ours, Policy.uniform("conv", "x", ["0"], 4, 4), spec)
    assert isinstance(ours[0], QuantConv2d)
    theirs = qnn.QuantConv2d(
        64,
        64,
        3,
        padding=1,
        bias=False,
        weight_bit_width=4,
        weight_quant=Int8WeightPerTensorFloat,
        input_quant=Int8ActPerTensorFloat,
        input_bit_width=4,
    )
    timings = {}
    for key, layer in (("qsearch", ours), ("brevitas", theirs)):
        layer(x).sum().backward()  # initialize
        samples = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(5):
                layer.zero_grad()
                layer(x).sum().backward()
            samples.append((time.perf_counter() - start) / 5)
        timings[key] = 1000 * statistics.median(samples)
    import brevitas

    return {
        "case": "brevitas",
        "brevitas_version": brevitas.__version__,
        "qsearch_ms": round(timings["qsearch"], 2),
        "brevitas_ms": round(timings["brevitas"], 2),
        "ratio": round(timings["qsearch"] / timings["brevitas"], 3),
        "layer": "conv 64->64 3x3, input 128x64x16x16, W4A4 per-tensor, fp32, fwd+bwd",
    }


def _recipe(row: dict) -> str:
    """Distillation weight and LSQ's initial activation step of a fine-tune row (rows made
    before either was recorded: no distillation, the paper's step)."""
    return f"KD {row.get('distill', 0.0):g}, act. step {row.get('step_init', 'lsq')}"


def report(rows: dict[str, dict]) -> str:
    accuracy = [r for r in rows.values() if "after_test" in r]
    table = [
        [
            f"{r['model']} / {r['dataset']}",
            f"W{r['w_bits']}A{r['a_bits']}",
            "on" if r["regularizer"] else "off",
            r["epochs"],
            f"{r['float_test']:.2f}",
            f"{r['before_test']:.2f}",
            f"{r['after_test']:.2f}",
            f"{r['loss']:+.2f}",
            _recipe(r),
            ""
            if r["target_loss"] is None
            else f"<= {r['target_loss']} ({'yes' if r['meets_target'] else '**no**'})",
            f"{r['seconds']:.0f} s",
        ]
        for r in accuracy
    ]
    text = [
        "## Quantization: LSQ fine-tuning (`python scripts/bench_quant.py`)",
        "",
        "First and last layer at 8 bits; test accuracy in %; loss = float - after.",
        "",
        markdown_table(
            [
                "model / dataset",
                "bits",
                "sin² reg.",
                "epochs",
                "float",
                "quantized, before",
                "after",
                "loss",
                "recipe",
                "target",
                "time",
            ],
            table,
        ),
    ]
    overhead = sorted(
        (r for r in rows.values() if r["case"].startswith("overhead-") and "ratio" in r),
        key=lambda r: (r["model"], r["precision"], r.get("compiled", False)),
    )
    if overhead:
        text += [
            "",
            "LSQ overhead: training step of the W4A4 model / the float model, batch "
            "128, same run (target <= 1.3). `compiled` = `runtime.compile=true` "
            "(fake quantizers fused by torch.compile; ~20 s compile once per process).",
            "",
            markdown_table(
                ["model", "precision", "quantizers", "float ms", "LSQ ms", "ratio", "met"],
                [
                    [
                        r["model"],
                        r["precision"],
                        "compiled" if r.get("compiled") else "eager",
                        r["float_ms"],
                        r["lsq_ms"],
                        r["ratio"],
                        "yes" if r["meets_target"] else "no",
                    ]
                    for r in overhead
                ],
            ),
        ]
    evals = [r for r in rows.values() if r["case"].startswith("eval-overhead-") and "ratio" in r]
    if evals:
        text += [
            "",
            "Evaluation overhead: a forward pass of 512 validation images (no gradients) "
            "through the LSQ model / the float model, same run, fp32, eager. `autograd`: "
            "the same quantized forward recording gradients, i.e. the out-of-place "
            "straight-through chain that every evaluation ran before the in-place no-grad "
            "path; a supernet or retraining evaluation is mostly such passes.",
            "",
            markdown_table(
                ["model", "bits", "threads", "float ms", "LSQ ms", "ratio", "autograd ms"],
                [
                    [
                        r["model"],
                        f"W{r['w_bits']}A{r['a_bits']}",
                        r["threads"],
                        r["float_ms"],
                        r["lsq_ms"],
                        r["ratio"],
                        f"{r['autograd_ms']} ({r['autograd_ratio']}x)",
                    ]
                    for r in evals
                ],
            ),
        ]
    init = [r for r in rows.values() if r["case"].startswith("step-init-") and "mse" in r]
    if init:
        text += [
            "",
            "LSQ's initial activation step (`quantizer.activation.step_init`), calibrated on "
            "one batch and not trained: test accuracy with the paper's 2<|x|>/sqrt(Qp) "
            "(`lsq`) and the least-MSE step (`mse`, the default).",
            "",
            markdown_table(
                ["model / dataset", "bits", "float", "lsq", "mse"],
                [
                    [
                        f"{r['model']} / {r['dataset']}",
                        f"W{r['w_bits']}A{r['a_bits']}",
                        f"{r['float_test']:.2f}",
                        f"{r['lsq']:.2f}",
                        f"{r['mse']:.2f}",
                    ]
                    for r in init
                ],
            ),
        ]
    peer = rows.get("brevitas")
    if peer and "ratio" in peer:
        text += [
            "",
            f"Peer: {peer['layer']}: qsearch {peer['qsearch_ms']} ms, brevitas "
            f"{peer['brevitas_version']} {peer['brevitas_ms']} ms (ratio {peer['ratio']}).",
        ]
    elif peer:
        text += ["", f"Peer comparison skipped: {peer['skipped']}"]
    return "\n".join(text)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only",
        default="",
        help="substring filter on case names (e.g. lenet5-mnist, resnet20, overhead, brevitas)",
    )
    parser.add_argument("--resnet-epochs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = {r["case"]: r for r in load_json("quant").get("rows", [])}

    def record(key: str, row: dict) -> None:
        """Keep each row as soon as it exists: a killed run loses only the case in progress."""
        rows[key] = row
        print(row, flush=True)
        save_json("quant", {"rows": list(rows.values())})
        update_doc_section("quant", report(rows))

    for name in CASES:
        if args.only in name:
            # a ResNet schedule other than the default is a row of its own
            shortened = args.resnet_epochs is not None and name.startswith("resnet")
            key = f"{name}-{args.resnet_epochs}ep" if shortened else name
            record(key, finetune_case(name, args.resnet_epochs, args.seed) | {"case": key})
    for model_name, dataset in OVERHEAD:
        for precision in ("fp32", "bf16"):
            for compiled in (False, True):
                key = f"overhead-{model_name}-{precision}" + ("-compiled" if compiled else "")
                if args.only in key:
                    record(key, overhead_row(model_name, dataset, precision, compiled))
    for model_name, dataset, w, a in STEP_INIT:
        key = f"step-init-{model_name}-{dataset}-w{w}a{a}"
        if args.only in key:
            record(key, step_init_row(model_name, dataset, w, a))
    key = "eval-overhead-resnet20-w3a3"
    if args.only in key:
        record(key, eval_overhead_row("resnet20", "cifar10", 3, 3))
    if args.only in "brevitas":
        record("brevitas", brevitas_row())
    return 0


if __name__ == "__main__":
    sys.exit(main())

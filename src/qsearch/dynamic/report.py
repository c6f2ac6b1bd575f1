"""Summaries of a dynamic model's evaluation: BitOPs percentiles, per-layer bit
histograms, whether harder samples get more bits; and their rich tables."""

from __future__ import annotations

from typing import Any

import torch
from rich.table import Table
from scipy.stats import spearmanr
from torch import Tensor

from qsearch.dynamic.settings import DynamicPlan
from qsearch.dynamic.train import DynamicEval

PERCENTILES = (5, 25, 50, 75, 95)


def _distribution(values: Tensor) -> dict[str, float]:
    values = values.double()
    stats = {"mean": float(values.mean()), "min": float(values.min()), "max": float(values.max())}
    qs = torch.quantile(values, torch.tensor([p / 100 for p in PERCENTILES], dtype=values.dtype))
    stats.update({f"p{p}": float(q) for p, q in zip(PERCENTILES, qs, strict=True)})
    return stats


def summarize(result: DynamicEval, plan: DynamicPlan) -> dict[str, Any]:
    """Accuracy (%), per-sample BitOPs (absolute and relative to the static base policy:
    mean, min, max, percentiles) and, per dynamic layer, the fraction of samples that chose
    each candidate ``w<bits>a<bits>``."""
    layers = {}
    for index, (name, candidates) in enumerate(plan.dynamic.items()):
        counts = torch.bincount(result.choices[:, index], minlength=len(candidates))
        fractions = (counts.double() / counts.sum()).tolist()
        layers[name] = {
            f"w{b.w_bits}a{b.a_bits}": f for b, f in zip(candidates, fractions, strict=True)
        }
    return {
        "samples": len(result.correct),
        "accuracy": result.accuracy,
        "bitops": _distribution(result.bitops),
        "relative_bitops": _distribution(result.relative),
        "layers": layers,
    }


def hardness(result: DynamicEval, float_losses: Tensor) -> dict[str, float | None]:
    """Do harder inputs get more bits? Spearman's rank correlation between the float
    model's per-sample loss and the sample's BitOPs (None when all samples cost the same),
    and the mean relative BitOPs of the
    easiest and hardest quarter of the samples (by float loss)."""
    order = float_losses.argsort()
    quarter = max(1, len(order) // 4)
    constant = bool((result.relative == result.relative[0]).all())  # rho undefined
    rho = None if constant else spearmanr(float_losses.numpy(), result.relative.numpy()).statistic
    return {
        "spearman": None if rho is None else float(rho),
        "easiest_quarter": float(result.relative[order[:quarter]].mean()),
        "hardest_quarter": float(result.relative[order[-quarter:]].mean()),
    }


def summary_table(summary: dict[str, Any], title: str) -> Table:
    """Accuracy and the distribution of per-sample BitOPs."""
    table = Table(title=title)
    table.add_column("")
    for key in ("mean", "min", *(f"p{p}" for p in PERCENTILES), "max"):
        table.add_column(key, justify="right")
    keys = ("mean", "min", *(f"p{p}" for p in PERCENTILES), "max")
    table.add_row("BitOPs (M)", *(f"{summary['bitops'][k] / 1e6:.3f}" for k in keys))
    table.add_row("vs static", *(f"{summary['relative_bitops'][k]:.3f}x" for k in keys))
    table.caption = f"test accuracy {summary['accuracy']:.2f} % on {summary['samples']} samples"
    return table


def layer_table(summary: dict[str, Any]) -> Table:
    """Per dynamic layer: the share of samples at each candidate bitwidth."""
    table = Table(title="bits chosen per layer (share of samples)")
    table.add_column("layer")
    columns = len(next(iter(summary["layers"].values())))
    for k in range(columns):
        table.add_column(f"candidate {k + 1}", justify="right")
    for name, shares in summary["layers"].items():
        table.add_row(name, *(f"{bits}: {100 * share:5.1f} %" for bits, share in shares.items()))
    return table

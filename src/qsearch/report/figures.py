"""Every figure qsearch draws, and the one helper that saves them (:func:`save_figure`).

A search's accuracy-cost Pareto plot and bits-per-layer chart, the per-epoch curves of a
training run (float training, fine-tuning), a sweep's Pareto plot over runs
(``qsearch report``) and a dynamic run's per-sample BitOPs against the float loss."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch import Tensor

from qsearch.env.recorder import Evaluation
from qsearch.quant.policy import Policy
from qsearch.utils.io import write_atomic


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated ``(cost, accuracy)`` points (lower cost, higher
    accuracy), ordered by cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best_accuracy = [], float("-inf")
    for index in order:
        if points[index][1] > best_accuracy:
            front.append(index)
            best_accuracy = points[index][1]
    return front


def pareto_figure(
    path: Path,
    evaluations: Sequence[Evaluation],
    references: dict[str, Evaluation],
    best: Evaluation | None,
    reference_cost: float,
    metric: str,
    budget: float | None,
    float_accuracy: float,
    title: str,
) -> Path:
    """Validation accuracy vs cost (relative to uniform 8-bit) of every evaluated policy."""
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    points = [(e.cost / reference_cost, e.accuracy) for e in evaluations]
    if points:
        ax.scatter(
            *zip(*points, strict=True),
            s=14,
            color="tab:blue",
            alpha=0.45,
            label=f"evaluated ({len(points)})",
        )
        front = pareto_front(points)
        ax.plot(
            [points[i][0] for i in front],
            [points[i][1] for i in front],
            color="tab:blue",
            lw=1.5,
            marker="o",
            markersize=6,
            markerfacecolor="none",
            drawstyle="steps-post",
            label="Pareto front",
        )
    for label, evaluation in references.items():
        x = evaluation.cost / reference_cost
        ax.scatter([x], [evaluation.accuracy], marker="s", s=40, color="tab:gray", zorder=3)
        ax.annotate(
            label,
            (x, evaluation.accuracy),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=8,
            color="tab:gray",
        )
    if best is not None:
        ax.scatter(
            [best.cost / reference_cost],
            [best.accuracy],
            marker="*",
            s=180,
            color="tab:red",
            zorder=4,
            label="chosen policy",
        )
    if budget is not None:
        ax.axvline(budget / reference_cost, color="tab:red", ls="--", lw=1, label="budget")
    ax.axhline(float_accuracy, color="black", ls=":", lw=1, label="float")
    ax.set_xlabel(f"{metric} relative to uniform 8-bit")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, path)


def bits_figure(path: Path, policy: Policy, params: Sequence[int], title: str) -> Path:
    """Weight and activation bits of each layer of ``policy``, layers in forward order."""
    names = list(policy.layers)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(names) + 2), 4), dpi=120)
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], policy.w_bits, width=0.4, label="weights", color="tab:blue")
    ax.bar([x + 0.2 for x in xs], policy.a_bits, width=0.4, label="activations", color="tab:orange")
    ax.set_xticks(list(xs), names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("bits")
    ax.set_ylim(0, max(8, *policy.w_bits, *policy.a_bits) + 3)  # room for the legend
    twin = ax.twinx()
    twin.plot(list(xs), params, color="tab:gray", marker=".", lw=1, label="weights (count)")
    twin.set_yscale("log")
    twin.set_ylabel("parameters (log)", color="tab:gray")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", ncol=2)
    fig.tight_layout()
    return save_figure(fig, path)


def curve_series(
    history: Sequence[Mapping[str, float]], suffix: str
) -> dict[str, tuple[list[int], list[float]]]:
    """``{key: (epochs, values)}`` for each history key ending in ``suffix`` (e.g. ``_acc``),
    in the order keys first appear; rows lacking a key are skipped for that key."""
    keys = list(dict.fromkeys(k for row in history for k in row if k.endswith(suffix)))
    return {
        key: (
            [int(row["epoch"]) for row in history if key in row],
            [float(row[key]) for row in history if key in row],
        )
        for key in keys
    }


def curves_figure(path: Path, history: Sequence[Mapping[str, float]], title: str) -> Path | None:
    """Loss (with the learning rate) and accuracy per epoch; None when there is no epoch."""
    if not history:
        return None
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    for ax, suffix, label in ((loss_ax, "_loss", "loss"), (acc_ax, "_acc", "accuracy %")):
        for key, (epochs, values) in curve_series(history, suffix).items():
            ax.plot(epochs, values, marker="." if len(epochs) < 30 else None, label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    lr = curve_series(history, "lr").get("lr")
    if lr:
        twin = loss_ax.twinx()
        twin.plot(*lr, color="tab:gray", ls=":", lw=1)
        twin.set_ylabel("learning rate (dotted)", color="tab:gray")
    last = history[-1]
    if "val_acc" in last:
        title += f" (final val {float(last['val_acc']):.2f} %)"
    fig.suptitle(title)
    return save_figure(fig, path)


def save_figure(fig: plt.Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG atomically (tight layout) and close it; returns ``path``."""
    try:
        fig.tight_layout()
        write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
    return path


def sweep_figure(
    path: Path,
    rows: Sequence[dict[str, Any]],
    groups: Sequence[dict[str, Any]],
    title: str,
) -> Path:
    """Validation accuracy vs cost of each search run's best policy, one colour per agent.

    Each setting is a point at its mean with ± std error bars over its runs (faint dots);
    the dashed line is the Pareto front of the setting means.
    """
    searched = [g for g in groups if not math.isnan(g["cost_vs_8bit_mean"])]
    agents = list(dict.fromkeys(g["agent"] for g in searched))
    colors = {agent: plt.get_cmap("tab10")(i % 10) for i, agent in enumerate(agents)}
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    labelled: set[str] = set()
    for group in searched:
        color = colors[group["agent"]]
        members = [r for r in rows if r["setting"] == group["setting"] and r["cost_vs_8bit"] != ""]
        ax.scatter(
            [float(r["cost_vs_8bit"]) for r in members],
            [float(r["val_accuracy"]) for r in members],
            s=12,
            color=color,
            alpha=0.35,
        )
        ax.errorbar(
            group["cost_vs_8bit_mean"],
            group["val_accuracy_mean"],
            xerr=group["cost_vs_8bit_std"],
            yerr=group["val_accuracy_std"],
            fmt="o",
            markersize=7,
            capsize=3,
            color=color,
            label=None if group["agent"] in labelled else group["agent"],
        )
        labelled.add(group["agent"])
        if len(searched) > len(agents):  # several settings per agent: name each point
            ax.annotate(
                group["setting"],
                (group["cost_vs_8bit_mean"], group["val_accuracy_mean"]),
                textcoords="offset points",
                xytext=(5, 4),
                fontsize=7,
                color=color,
            )
    points = [(g["cost_vs_8bit_mean"], g["val_accuracy_mean"]) for g in searched]
    front = pareto_front(points)
    ax.plot(
        [points[i][0] for i in front],
        [points[i][1] for i in front],
        color="tab:gray",
        ls="--",
        lw=1,
        drawstyle="steps-post",
        marker="o",
        markersize=13,
        markerfacecolor="none",
        label="Pareto front (means)",
    )
    metrics = sorted({str(r["metric"]) for r in rows if r["metric"]})
    ax.set_xlabel(f"{', '.join(metrics)} relative to uniform 8-bit")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"{title}: best policy per run, mean ± std over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, path)


def dynamic_figure(
    path: Path, float_losses: Tensor, relative: Tensor, title: str, bins: int = 10
) -> Path:
    """Left: each sample's BitOPs (relative to the static policy) against its loss under the
    float model, with the mean per loss decile; right: the histogram of per-sample BitOPs.

    Answers "do harder inputs get more bits?": a rising decile curve says yes.
    """
    losses = float_losses.double().clamp_min(1e-6)
    cost = relative.double()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    jitter = (torch.rand(len(cost), generator=torch.Generator().manual_seed(0)) - 0.5) * 0.004
    left.scatter(losses, cost + jitter, s=4, alpha=0.25, color="tab:blue", label="samples")
    order = losses.argsort()
    groups = [g for g in order.chunk(bins) if len(g)]
    left.plot(
        [float(losses[g].median()) for g in groups],
        [float(cost[g].mean()) for g in groups],
        color="tab:red",
        marker="o",
        lw=1.5,
        label="mean per loss decile",
    )
    left.axhline(1.0, color="black", ls=":", lw=1, label="static policy")
    left.set_xscale("log")
    left.set_xlabel("float model's loss on the sample (log)")
    left.set_ylabel("BitOPs relative to static")
    left.grid(alpha=0.3)
    left.legend(fontsize=8, loc="best")
    right.hist(cost.numpy(), bins=40, color="tab:blue", alpha=0.8)
    right.axvline(float(cost.mean()), color="tab:red", lw=1.5, label=f"mean {cost.mean():.3f}x")
    right.axvline(1.0, color="black", ls=":", lw=1, label="static policy")
    right.set_xlabel("BitOPs relative to static")
    right.set_ylabel("samples")
    right.legend(fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, path)

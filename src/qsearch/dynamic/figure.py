"""The figure of a dynamic run: per-sample BitOPs against the float model's loss."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch import Tensor

from qsearch.utils.io import write_atomic


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
    try:
        fig.tight_layout()
        write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
    return path

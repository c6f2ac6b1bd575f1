"""Periodic (sin^2) regularization toward each layer's quantization grid.

``R(w) = lambda * mean(sin^2(pi * w / s))`` per layer, whose minima sit exactly on the grid
points ``k * s`` of a layer with step ``s`` (ReLeQ's quantization-friendly regularization,
made explicit in the authors' SinReQ / WaveQ). ``lambda`` rises during fine-tuning so the
weights settle onto grid points. The step is detached: the regularizer moves weights, and
the quantizer's own loss-driven gradient moves the step.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from qsearch.quant.layers import quant_layers


def periodic_penalty(weight: Tensor, step: Tensor, offset: Tensor | None = None) -> Tensor:
    """``mean(sin^2(pi * (w - offset) / s))``: 0 on the grid, 1 halfway between points."""
    shape = (-1, *([1] * (weight.dim() - 1)))
    s = step.detach().view(shape) if step.numel() > 1 else step.detach()
    w = weight if offset is None else weight - offset.detach().view(shape)
    return torch.sin(math.pi * w / s).pow(2).mean()


def lambda_schedule(
    progress: float, lambda_max: float, kind: str = "exp", start_fraction: float = 1e-3
) -> float:
    """The regularizer's weight at ``progress`` in [0, 1] of fine-tuning.

    ``exp`` rises geometrically from ``start_fraction * lambda_max`` to ``lambda_max``;
    ``linear`` rises linearly from 0; ``constant`` stays at ``lambda_max``.
    """
    progress = min(max(progress, 0.0), 1.0)
    if kind == "exp":
        return lambda_max * start_fraction ** (1.0 - progress)
    if kind == "linear":
        return lambda_max * progress
    if kind == "constant":
        return lambda_max
    raise ValueError(f"unknown lambda schedule '{kind}' (exp, linear or constant)")


class PeriodicRegularizer:
    """Sum over quantized layers with a uniform weight grid of :func:`periodic_penalty`.

    Call :meth:`set_progress` as training advances; calling the object returns
    ``lambda * sum_l mean(sin^2(pi w_l / s_l))`` (a zero tensor when lambda is 0).
    """

    def __init__(self, model: nn.Module, lambda_max: float, schedule: str = "exp") -> None:
        self.layers = [layer for _, layer in quant_layers(model) if layer.weight_quant.enabled]
        self.lambda_max = lambda_max
        self.schedule = schedule
        self.current = lambda_schedule(0.0, lambda_max, schedule)

    def set_progress(self, progress: float) -> float:
        """Update lambda for ``progress`` in [0, 1]; returns the new lambda."""
        self.current = lambda_schedule(progress, self.lambda_max, self.schedule)
        return self.current

    def penalty(self) -> Tensor:
        """The unweighted sum of per-layer penalties (for logging)."""
        total = torch.zeros(())
        for layer in self.layers:
            grid = layer.weight_quant.grid()
            if grid is not None:
                total = total + periodic_penalty(layer.weight, grid.scale, grid.offset)
        return total

    def __call__(self) -> Tensor:
        if self.current == 0.0:
            return torch.zeros(())
        return self.current * self.penalty()

"""LSQ+: LSQ with a learned offset and better initialization (Bhalgat et al., CVPR-W 2020).

Activations (eq. 2-3): ``x_hat = clamp(round((x - beta) / s), 0, 2^b - 1) * s + beta``, an
unsigned grid shifted by a learned offset ``beta``, so negative activations (Swish, a
residual sum, the network input) need no signed grid. ``s`` and ``beta`` share LSQ's
gradient scale; with the straight-through round ``dx_hat/dbeta`` is 0 inside the range and
1 outside. Both start at the minimum of the quantization MSE on the first batch (sec. 2.3),
here a grid search over clip ranges ``[a * min(x), c * max(x)]``. Zero is not a level in
general. Weights: LSQ (see :mod:`qsearch.quant.lsq`) started at
``s = max(|mu - 3 sigma|, |mu + 3 sigma|) / 2^(b-1)`` (eq. 5).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from qsearch.quant._clip import subsample
from qsearch.quant.base import Role, UniformGrid, grad_scale, round_ste
from qsearch.quant.lsq import STEP_EPS, LsqQuantizer

SEARCH_STEPS = 20
SEARCH_SAMPLES = 16384  # the 2-d search costs SEARCH_STEPS^2 passes over them


def mse_best_range(x: Tensor, levels: int, steps: int = SEARCH_STEPS) -> tuple[float, float]:
    """``(s, beta)`` of the unsigned grid with offset minimizing the MSE of quantizing ``x``.

    Candidates: ``beta = a * min(x)``, ``s = (c * max(x) - beta) / levels`` for ``a, c`` in
    ``{1/steps, ..., 1}`` (``levels = 2^b - 1``).
    """
    sample = subsample(x, SEARCH_SAMPLES).float()
    fractions = torch.arange(1, steps + 1, device=x.device, dtype=torch.float32) / steps
    lows = (fractions * sample.min()).unsqueeze(1)
    best = (math.inf, 1.0, 0.0)
    for high in fractions * sample.max():
        scale = ((high - lows) / levels).clamp_min(STEP_EPS)
        x_hat = torch.round((sample - lows) / scale).clamp(0, levels) * scale + lows
        errors = (x_hat - sample).pow(2).mean(1)
        i = int(errors.argmin())
        if errors[i] < best[0]:
            best = (float(errors[i]), float(scale[i]), float(lows[i]))
    return best[1], best[2]


class LsqPlusQuantizer(LsqQuantizer):
    """LSQ+ : asymmetric activations with a learned offset, MSE/statistics initialization.

    Args:
        bits: weights 2..8, activations 1..8, or 32 (float).
        role: ``"weight"`` (signed LSQ grid) or ``"activation"`` (unsigned grid + offset).
        channels: output channels (weights, per-channel steps).
        per_channel: one step per output channel (weights only).
        eps: the step is kept >= ``eps``.
    """

    name = "lsq_plus"
    zero_exact: ClassVar[frozenset[str]] = frozenset({"weight"})
    takes_low_precision = False  # the offset path computes in fp32

    def __init__(
        self,
        bits: int,
        role: Role,
        channels: int = 1,
        per_channel: bool = False,
        eps: float = STEP_EPS,
    ) -> None:
        super().__init__(bits, role, role == "weight", channels, per_channel, eps)
        if role == "activation":
            self.beta = nn.Parameter(torch.zeros(1))

    def initialize(self, x: Tensor) -> None:
        """Weights: ``max(|mu - 3 sigma|, |mu + 3 sigma|) / 2^(b-1)``; activations: min MSE."""
        if self.role == "activation":
            step, beta = mse_best_range(x, 2**self.bits - 1)
            self.step.data.fill_(max(step, self.eps))
            self.beta.data.fill_(beta)
            return
        flat = x.flatten(1) if self.per_channel else x.reshape(1, -1)
        mu = flat.mean(1)
        sigma = flat.std(1, unbiased=False)
        bound = torch.maximum((mu - 3 * sigma).abs(), (mu + 3 * sigma).abs())
        self.step.data.copy_((bound / 2 ** (self.bits - 1)).clamp_min(self.eps))

    def quantize(self, x: Tensor) -> Tensor:
        if self.role == "weight":
            return super().quantize(x)
        if bool((self.step.data < self.eps).any()):
            with torch.no_grad():
                self.step.clamp_(min=self.eps)
        levels = 2**self.bits - 1
        g = 1.0 / math.sqrt(x[0].numel() * levels)
        s, beta = grad_scale(self.step, g), grad_scale(self.beta, g)
        return round_ste(torch.clamp((x - beta) / s, 0, levels)) * s + beta

    def grid(self) -> UniformGrid | None:
        if self.role == "weight" or not self.enabled:
            return super().grid()
        scale = self.step.detach().clamp_min(self.eps)
        return UniformGrid(scale=scale, qmin=0, qmax=2**self.bits - 1, offset=self.beta.detach())

"""PACT: parameterized clipping activation (Choi et al., arXiv:1805.06085, 2018).

``y = clip(x, 0, alpha)`` with a learned ``alpha`` (eq. 1), then
``y_q = round(y * (2^k - 1) / alpha) * alpha / (2^k - 1)`` (eq. 2). The round is
straight-through, so ``dy_q/dalpha = dy/dalpha = 1`` where ``x >= alpha`` and 0 elsewhere
(eq. 3). Signed inputs (no ReLU before the layer) are clipped to ``[-alpha, alpha]`` onto a
mid-tread grid (``{-alpha, alpha}`` at 1 bit); there ``dy_q/dalpha = -1`` where
``x <= -alpha``. Activations only: the paper pairs PACT with DoReFa weights.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from qsearch.quant._clip import clip_grid, mse_best_clip, snap_ste
from qsearch.quant.base import Quantizer, Role, UniformGrid

ALPHA_EPS = 1e-8


class PactQuantizer(Quantizer):
    """PACT activation quantizer with a learned clip ``alpha``.

    Args:
        init: initial ``alpha``; ``None`` (default) takes the clip that minimizes the
            quantization MSE of the first batch (the paper starts from 10, which leaves few
            non-zero levels at low bits on small activations).
        eps: ``alpha`` is kept >= ``eps`` (projected before every use).
    """

    name = "pact"
    min_bits = 1
    roles: ClassVar[frozenset[str]] = frozenset({"activation"})
    zero_exact: ClassVar[frozenset[str]] = frozenset({"activation"})

    def __init__(
        self,
        bits: int,
        role: Role,
        signed: bool | None = None,
        channels: int = 1,
        init: float | None = None,
        eps: float = ALPHA_EPS,
    ) -> None:
        super().__init__(bits, role, signed, channels)
        self.init = init
        self.eps = eps
        self.alpha = nn.Parameter(torch.ones(1))

    def initialize(self, x: Tensor) -> None:
        """``alpha`` from ``init``, or the MSE-best clip of the first batch."""
        if self.init is None:
            alpha = mse_best_clip(x, self.bits, self.signed)
        else:
            alpha = self.alpha.new_tensor([self.init])
        self.alpha.data.copy_(alpha.clamp_min(self.eps))

    def quantize(self, x: Tensor) -> Tensor:
        if bool((self.alpha.data < self.eps).any()):
            with torch.no_grad():
                self.alpha.clamp_(min=self.eps)
        alpha = self.alpha
        low = -alpha if self.signed else torch.zeros_like(alpha)
        y = torch.where(x >= alpha, alpha, torch.where(x <= low, low, x))
        return snap_ste(y, alpha, self.bits, self.signed)

    def grid(self) -> UniformGrid | None:
        if not self.enabled:
            return None
        return clip_grid(self.alpha.clamp_min(self.eps), self.bits, self.signed)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, alpha={self.alpha.item():.4g}"

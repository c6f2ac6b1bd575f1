"""DoReFa-Net quantization (Zhou et al., arXiv:1606.06160, 2016).

``quantize_k(r) = round((2^k - 1) r) / (2^k - 1)`` on ``[0, 1]`` with a straight-through
round (eq. 5). Weights, ``k >= 2`` (eq. 9): ``w_t = tanh(w) / (2 max|tanh(w)|) + 1/2``,
``w_q = 2 quantize_k(w_t) - 1``: ``2^k`` levels ``2i / (2^k - 1) - 1``, zero not among them.
Weights, ``k = 1`` (eq. 7): ``w_q = sign(w) * E(|w|)`` with an identity gradient (``E``
is not differentiated). Activations (eq. 11): ``quantize_k(clip(x, 0, 1))``; signed inputs
(no ReLU before the layer) are clipped to ``[-1, 1]`` onto a mid-tread grid (``{-1, 1}`` at
1 bit).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from qsearch.quant._clip import clip_grid, snap_ste
from qsearch.quant.base import Quantizer, Role, UniformGrid

EPS = 1e-8  # floor of max|tanh(w)| and E|w| (all-zero weights)


class DorefaQuantizer(Quantizer):
    """DoReFa weights (``tanh``-normalized, or ``sign * E|w|`` at 1 bit) and activations.

    Args:
        bits: 1..8, or 32 (float).
        role: ``"weight"`` or ``"activation"``.
        signed: activations: force a signed/unsigned grid (``None``: detect).
        channels: unused (the scheme is per tensor).
    """

    name = "dorefa"
    min_bits = 1
    zero_exact: ClassVar[frozenset[str]] = frozenset({"activation"})

    def __init__(
        self, bits: int, role: Role, signed: bool | None = None, channels: int = 1
    ) -> None:
        super().__init__(bits, role, signed, channels)
        if role == "weight":
            # E|w| of the last 1-bit forward pass, so grid() can describe {-E, E}
            self.register_buffer("mean_abs", torch.ones(1))

    def _unit(self) -> Tensor:
        return torch.ones(1, device=self.initialized.device)

    def quantize(self, x: Tensor) -> Tensor:
        if self.role == "activation":
            y = x.clamp(-1.0 if self.signed else 0.0, 1.0)
            return snap_ste(y, self._unit(), self.bits, self.signed)
        if self.bits == 1:
            e = x.detach().abs().mean().clamp_min(EPS)
            self.mean_abs.fill_(e)
            levels = torch.where(x.detach() >= 0, e, -e)
            return levels + (x - x.detach())
        t = torch.tanh(x)
        w_t = t / (2 * t.abs().max().clamp_min(EPS)) + 0.5
        return 2 * snap_ste(w_t, self._unit(), self.bits, signed=False) - 1

    def grid(self) -> UniformGrid | None:
        if not self.enabled:
            return None
        if self.role == "activation":
            return clip_grid(self._unit(), self.bits, self.signed)
        if self.bits == 1:
            e = self.mean_abs
            return UniformGrid(scale=2 * e, qmin=0, qmax=1, offset=-e)
        levels = 2**self.bits - 1
        return UniformGrid(
            scale=2 * self._unit() / levels, qmin=0, qmax=levels, offset=-self._unit()
        )

"""WRPN mid-tread quantization (Mishra et al., ICLR 2018), ReLeQ's weight quantizer.

Weights: ``w_q = round(clip(w, -1, 1) * n) / n`` with ``n = 2^(k-1) - 1``: a mid-tread grid
of ``2^k - 1`` levels on ``[-1, 1]`` where zero is a level (WRPN sec. 3). Activations after
a ReLU: ``x_q = round(clip(x, 0, 1) * (2^k - 1)) / (2^k - 1)``; signed inputs use the weights'
mid-tread grid on ``[-1, 1]`` (``{-1, 1}`` at 1 bit). Round is straight-through; the clip
passes gradients only inside the range. There is nothing to learn or initialize.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from qsearch.quant._clip import clip_grid, snap_ste
from qsearch.quant.base import Quantizer, Role, UniformGrid


class WrpnQuantizer(Quantizer):
    """WRPN: fixed range ``[-1, 1]`` (weights, signed inputs) or ``[0, 1]`` (after ReLU).

    Weights need 2 bits or more (``n = 2^(k-1) - 1 >= 1``); activations work from 1 bit.
    """

    name = "wrpn"
    min_bits = 2
    zero_exact: ClassVar[frozenset[str]] = frozenset({"weight", "activation"})

    @classmethod
    def check_bits(cls, bits: int, role: Role) -> None:
        if role == "activation" and bits == 1:
            return
        super().check_bits(bits, role)

    def _range(self) -> Tensor:
        return torch.ones(1, device=self.initialized.device)

    def quantize(self, x: Tensor) -> Tensor:
        y = x.clamp(-1.0 if self.signed else 0.0, 1.0)
        return snap_ste(y, self._range(), self.bits, self.signed)

    def grid(self) -> UniformGrid | None:
        return clip_grid(self._range(), self.bits, self.signed) if self.enabled else None

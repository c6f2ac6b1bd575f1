"""Per-sample BitOPs of a dynamic network (Liu et al., CVPR 2022, eq. 6; HAWQ's BitOPs).

``BitOPs(x) = sum_static MACs_l w_l a_l + sum_dynamic sum_k m_lk(x) MACs_l w_lk a_lk``, where
``m(x)`` is the controller's one-hot choice for sample ``x``. The reference is the BitOPs
of the static base policy (every dynamic layer at its base bits), so a relative cost of 1.0
means "as expensive as uniform b-bit".
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from qsearch.dynamic.settings import DynamicPlan
from qsearch.hardware.bitops import BitOps
from qsearch.models.inventory import LayerInfo
from qsearch.quant.policy import Policy


class BitCost(nn.Module):
    """Maps one-hot choices ``(N, L, K)`` to per-sample BitOPs ``(N,)``.

    Attributes:
        table: ``(L, K)`` BitOPs of dynamic layer l at candidate k (a buffer, not saved).
        static: BitOPs of the static layers, per sample.
        reference: BitOPs of the base policy, per sample.
    """

    def __init__(self, inventory: Sequence[LayerInfo], plan: DynamicPlan, base: Policy) -> None:
        super().__init__()
        layers = {layer.name: layer for layer in inventory}
        model = BitOps()
        table = [
            [model.layer_cost(layers[name], b.w_bits, b.a_bits).bitops for b in candidates]
            for name, candidates in plan.dynamic.items()
        ]
        self.register_buffer("table", torch.tensor(table, dtype=torch.float64), persistent=False)
        self.static = sum(
            model.layer_cost(layers[n], b.w_bits, b.a_bits).bitops for n, b in plan.static.items()
        )
        self.reference = model.total([layers[name] for name in base.layers], base)

    def bitops(self, choice: Tensor) -> Tensor:
        """BitOPs of each sample ``(N,)`` (float64) for one-hot choices ``(N, L, K)``."""
        return self.static + torch.einsum("nlk,lk->n", choice.double(), self.table)

    def relative(self, choice: Tensor) -> Tensor:
        """Per-sample BitOPs over the static base policy's (fp32, differentiable)."""
        return (self.bitops(choice) / self.reference).float()

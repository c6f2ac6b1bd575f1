"""BitOPs: ``sum_l MACs_l x w_bits_l x a_bits_l`` (HAWQ; Liu et al., CVPR 2022).

A hardware-free proxy for compute: one BitOP is a 1-bit x 1-bit multiply-accumulate.
"""

from __future__ import annotations

from qsearch.hardware.base import CostModel, LayerCost, base_cost
from qsearch.models.inventory import LayerInfo


class BitOps(CostModel):
    """BitOPs per sample (and model size); no latency or energy.

    Example::

        BitOps().cost(inventory, policy).total()   # BitOPs
    """

    def __init__(self, name: str = "bitops", metric: str = "bitops") -> None:
        super().__init__(name, metric)

    def layer_cost(self, layer: LayerInfo, w_bits: int, a_bits: int) -> LayerCost:
        return base_cost(layer, w_bits, a_bits)

"""Model size: ``sum_l weights_l x w_bits_l / 8 + biases_l x 4`` bytes (HAQ's size mode).

Weights are stored at their bitwidth, biases as 32-bit integers.
"""

from __future__ import annotations

from qsearch.hardware.base import CostModel, LayerCost, base_cost
from qsearch.models.inventory import LayerInfo


class ModelSize(CostModel):
    """Bytes of the quantizable layers' parameters (and BitOPs); no latency or energy.

    Example::

        ModelSize().cost(inventory, policy).total()   # bytes
    """

    def __init__(self, name: str = "size", metric: str = "size") -> None:
        super().__init__(name, metric)

    def layer_cost(self, layer: LayerInfo, w_bits: int, a_bits: int) -> LayerCost:
        return base_cost(layer, w_bits, a_bits)

"""BitFusion (Sharma et al., ISCA 2018): MACs built from 2-bit x 2-bit BitBricks.

A ``w x a``-bit MAC fuses ``ceil(w/2) x ceil(a/2)`` bricks, so compute takes::

    batch x MACs x ceil(w_bits/2) x ceil(a_bits/2) / bricks   cycles

under the roofline of :mod:`.roofline`. A float layer costs ``16 x 16`` bricks per MAC.
Energy is per brick operation (one 2-bit x 2-bit multiply-accumulate).
"""

from __future__ import annotations

from math import ceil

from qsearch.hardware.base import positive
from qsearch.hardware.roofline import RooflineModel

BRICK_BITS = 2


class BitFusion(RooflineModel):
    """BitFusion-like accelerator with a memory roofline.

    Args:
        bricks: BitBricks (2x2-bit multipliers) in the array; 16 make one 8x8-bit MAC.
        roofline: ``clock_mhz``, ``bytes_per_cycle``, ``energy_per_op_pj`` (per brick
            operation), ``energy_per_byte_pj``, ``batch``: see
            :class:`~qsearch.hardware.roofline.RooflineModel`.

    Example::

        BitFusion(bricks=4096, clock_mhz=500, bytes_per_cycle=32,
                  energy_per_op_pj=0.0144, energy_per_byte_pj=40).cost(inventory, policy)
    """

    def __init__(
        self,
        *,
        bricks: int,
        name: str = "bitfusion",
        metric: str = "latency",
        **roofline: float,
    ) -> None:
        positive(name, bricks=bricks)
        super().__init__(name, metric, ops_per_cycle=bricks, **roofline)

    def ops_per_mac(self, w_bits: int, a_bits: int) -> int:
        """Brick operations of one MAC: ``ceil(w/2) x ceil(a/2)``."""
        return ceil(w_bits / BRICK_BITS) * ceil(a_bits / BRICK_BITS)

"""A bit-serial accelerator: Stripes (Judd et al., MICRO 2016), BISMO (Umuroglu et al., FPL 2018).

A bit-serial unit spends one cycle per bit of its serial operand(s), so a MAC costs::

    ops_per_mac = w_bits          (serial: weights)
                = a_bits          (serial: activations; Stripes)
                = w_bits x a_bits (serial: both; BISMO)

and compute takes ``batch x MACs x ops_per_mac / lanes`` cycles (ReLeQ: Stripes time scales
linearly with the serial operand's bits), under the roofline of :mod:`.roofline`. A float
layer is 32 serial bits. Energy is per MAC-bit (one MAC over one serial bit, or bit pair).
"""

from __future__ import annotations

from qsearch.errors import UserError
from qsearch.hardware.base import positive
from qsearch.hardware.roofline import RooflineModel

SERIAL = ("weights", "activations", "both")


class BitSerial(RooflineModel):
    """Bit-serial accelerator with a memory roofline.

    Args:
        serial: which operand is processed bit by bit: weights, activations or both.
        lanes: MAC-bits per cycle (e.g. BISMO's ``Dm x Dn x Dk`` binary dot-product array).
        roofline: ``clock_mhz``, ``bytes_per_cycle``, ``energy_per_op_pj`` (per MAC-bit),
            ``energy_per_byte_pj``, ``batch``: see
            :class:`~qsearch.hardware.roofline.RooflineModel`.

    Example::

        BitSerial(serial="both", lanes=16384, clock_mhz=200, bytes_per_cycle=32,
                  energy_per_op_pj=0.0036, energy_per_byte_pj=40).cost(inventory, policy)
    """

    def __init__(
        self,
        *,
        serial: str,
        lanes: int,
        name: str = "bitserial",
        metric: str = "latency",
        **roofline: float,
    ) -> None:
        if serial not in SERIAL:
            raise UserError(
                f"hardware '{name}': serial must be one of {', '.join(SERIAL)}, got {serial!r}"
            )
        positive(name, lanes=lanes)
        super().__init__(name, metric, ops_per_cycle=lanes, **roofline)
        self.serial = serial

    def ops_per_mac(self, w_bits: int, a_bits: int) -> int:
        """Serial bits (MAC-bits) of one MAC."""
        if self.serial == "weights":
            return w_bits
        if self.serial == "activations":
            return a_bits
        return w_bits * a_bits

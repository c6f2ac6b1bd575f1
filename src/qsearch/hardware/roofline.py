"""The roofline shared by the accelerator models: a layer takes the slower of compute and memory.

Per layer, for one batch of ``batch`` samples (Williams et al., "Roofline", CACM 2009)::

    ops            = batch x MACs x ops_per_mac(w_bits, a_bits)       (the model's unit of work)
    bytes          = batch x (input + output elements) x a_bits / 8   (activations)
                     + weights x w_bits / 8 + biases x 4              (parameters, once a batch)
    latency_cycles = max(ops / ops_per_cycle, bytes / bytes_per_cycle)
    latency_s      = latency_cycles / clock
    energy_j       = ops x energy_per_op + bytes x energy_per_byte

Memory model: every layer reads its input feature map and its parameters from off-chip memory
once and writes its output feature map once, both activations at the layer's ``a_bits`` (the
bitwidth of its input); nothing stays on chip between layers. This bounds traffic from above;
it is what makes depthwise and fully connected layers (few MACs per byte) memory-bound on a
low-bandwidth edge device, as HAQ observes.
"""

from __future__ import annotations

from abc import abstractmethod

from qsearch.hardware.base import BIAS_BYTES, METRICS, CostModel, LayerCost, base_cost, positive
from qsearch.models.inventory import LayerInfo


def activation_elements(layer: LayerInfo) -> tuple[int, int]:
    """Input and output activation elements of one sample through ``layer``."""
    positions = layer.macs // layer.weight_params  # output pixels (conv) or tokens (linear)
    outputs = layer.out_channels * positions
    if layer.kind == "linear":
        return layer.in_channels * positions, outputs
    height, width = layer.input_size
    return layer.in_channels * height * width, outputs


def traffic_bytes(layer: LayerInfo, w_bits: int, a_bits: int, batch: int) -> float:
    """Bytes moved to run one batch through ``layer`` (see the module docstring)."""
    inputs, outputs = activation_elements(layer)
    activations = batch * (inputs + outputs) * a_bits / 8
    return activations + layer.weight_params * w_bits / 8 + layer.bias_params * BIAS_BYTES


class RooflineModel(CostModel):
    """An accelerator whose per-layer latency is ``max(compute, memory)`` cycles.

    Subclasses define :meth:`ops_per_mac`, the units of work one MAC costs at given bits.

    Args:
        name / metric: the preset's name and primary metric (latency, energy, size, bitops).
        ops_per_cycle: units of work done per cycle (bit-serial lanes, BitBricks).
        clock_mhz: clock frequency, MHz.
        bytes_per_cycle: off-chip memory bandwidth, bytes per cycle.
        energy_per_op_pj: energy of one unit of work, picojoules.
        energy_per_byte_pj: energy of moving one byte off chip, picojoules.
        batch: samples per inference; weights are fetched once per batch.
    """

    provides = METRICS

    def __init__(
        self,
        name: str,
        metric: str,
        *,
        ops_per_cycle: float,
        clock_mhz: float,
        bytes_per_cycle: float,
        energy_per_op_pj: float,
        energy_per_byte_pj: float,
        batch: int = 1,
    ) -> None:
        super().__init__(name, metric)
        positive(
            name,
            clock_mhz=clock_mhz,
            bytes_per_cycle=bytes_per_cycle,
            energy_per_op_pj=energy_per_op_pj,
            energy_per_byte_pj=energy_per_byte_pj,
            batch=batch,
        )
        self.ops_per_cycle = float(ops_per_cycle)
        self.clock_hz = float(clock_mhz) * 1e6
        self.bytes_per_cycle = float(bytes_per_cycle)
        self.energy_per_op_j = float(energy_per_op_pj) * 1e-12
        self.energy_per_byte_j = float(energy_per_byte_pj) * 1e-12
        self.batch = int(batch)

    @abstractmethod
    def ops_per_mac(self, w_bits: int, a_bits: int) -> int:
        """Units of work of one MAC with ``w_bits`` weights and ``a_bits`` activations."""

    def layer_cost(self, layer: LayerInfo, w_bits: int, a_bits: int) -> LayerCost:
        ops = self.batch * layer.macs * self.ops_per_mac(w_bits, a_bits)
        moved = traffic_bytes(layer, w_bits, a_bits, self.batch)
        compute = ops / self.ops_per_cycle
        memory = moved / self.bytes_per_cycle
        cycles = max(compute, memory)
        return base_cost(
            layer,
            w_bits,
            a_bits,
            latency_cycles=cycles,
            latency_s=cycles / self.clock_hz,
            energy_j=ops * self.energy_per_op_j + moved * self.energy_per_byte_j,
            bound="memory" if memory > compute else "compute",
        )

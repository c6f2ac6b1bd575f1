"""The cost-model core: per-layer costs, the report, and the interface every model implements.

A cost model maps the layer inventory and a policy to per-layer costs (HAQ's "hardware in
the loop", Wang et al. CVPR 2019). Units: cycles, seconds, joules, bytes, and BitOPs (bit
operations, ``MACs x w_bits x a_bits``). Every model reports size and BitOPs; hardware
models add latency and energy. 32 bits means a float layer and is costed as 32 bits.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from qsearch.errors import UserError
from qsearch.models.inventory import LayerInfo
from qsearch.quant.policy import Policy

METRICS = ("latency", "energy", "size", "bitops")
# the LayerCost field (and CostReport.totals key) holding each metric
METRIC_FIELDS = {
    "latency": "latency_s",
    "energy": "energy_j",
    "size": "size_bytes",
    "bitops": "bitops",
}
BIAS_BYTES = 4  # biases stay 32-bit integers (accumulator width), whatever w_bits is


@dataclass(frozen=True)
class LayerCost:
    """One layer's cost. ``None`` where the model does not compute that quantity.

    ``bound`` is ``"compute"`` or ``"memory"`` for roofline models: which term set the
    latency.
    """

    name: str
    w_bits: int
    a_bits: int
    bitops: float
    size_bytes: float
    latency_cycles: float | None = None
    latency_s: float | None = None
    energy_j: float | None = None
    bound: str | None = None

    def value(self, metric: str) -> float | None:
        """This layer's ``metric`` (latency in s, energy in J, size in bytes, or BitOPs)."""
        return getattr(self, METRIC_FIELDS[metric])


@dataclass(frozen=True)
class CostReport:
    """Per-layer costs of a policy under one cost model, and their totals.

    ``metric`` is the model's primary metric: the one scalar a search optimizes,
    ``report.cost == report.total(report.metric)``.
    """

    model: str
    metric: str
    layers: tuple[LayerCost, ...]

    def per_layer(self, metric: str | None = None) -> list[float]:
        """Each layer's ``metric`` (default: the primary one), in forward order."""
        metric = metric or self.metric
        values = [layer.value(metric) for layer in self.layers]
        if any(value is None for value in values):
            raise UserError(f"cost model '{self.model}' does not compute {metric}")
        return [float(value) for value in values]  # type: ignore[arg-type]

    def total(self, metric: str | None = None) -> float:
        """The sum over layers of ``metric`` (s, J, bytes or BitOPs; default: primary)."""
        return float(sum(self.per_layer(metric)))

    @property
    def cost(self) -> float:
        """The total of the primary metric."""
        return self.total()

    def totals(self) -> dict[str, float | None]:
        """Totals of latency (cycles and s), energy (J), size (bytes) and BitOPs; None where
        the model does not compute the quantity."""
        keys = ("latency_cycles", "latency_s", "energy_j", "size_bytes", "bitops")
        totals: dict[str, float | None] = {}
        for key in keys:
            values = [getattr(layer, key) for layer in self.layers]
            totals[key] = None if None in values else float(sum(values))
        return totals

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "metric": self.metric,
            "cost": self.cost,
            "totals": self.totals(),
            "layers": [asdict(layer) for layer in self.layers],
        }


def layer_bitops(layer: LayerInfo, w_bits: int, a_bits: int) -> float:
    """BitOPs of one sample through ``layer``: ``MACs x w_bits x a_bits``."""
    return float(layer.macs * w_bits * a_bits)


def layer_size_bytes(layer: LayerInfo, w_bits: int) -> float:
    """Bytes to store ``layer``: weights at ``w_bits``, biases at 32 bits."""
    return layer.weight_params * w_bits / 8 + layer.bias_params * BIAS_BYTES


def base_cost(layer: LayerInfo, w_bits: int, a_bits: int, **extra: Any) -> LayerCost:
    """A layer's size and BitOPs, plus the model-specific ``extra`` fields."""
    return LayerCost(
        name=layer.name,
        w_bits=w_bits,
        a_bits=a_bits,
        bitops=layer_bitops(layer, w_bits, a_bits),
        size_bytes=layer_size_bytes(layer, w_bits),
        **extra,
    )


class CostModel(ABC):
    """``cost(inventory, policy) -> CostReport``; reads the inventory, never the model.

    Subclasses list the metrics they compute in ``provides`` and implement
    :meth:`layer_cost`. A preset YAML in ``conf/hardware/`` instantiates one.

    Args:
        name: the preset's name (shown in tables and reports).
        metric: the primary metric, one of ``provides``.
    """

    provides: tuple[str, ...] = ("size", "bitops")

    def __init__(self, name: str, metric: str) -> None:
        if metric not in self.provides:
            raise UserError(
                f"hardware '{name}' cannot optimize {metric!r} (it computes: "
                f"{', '.join(self.provides)})"
            )
        self.name = name
        self.metric = metric

    def cost(self, inventory: Sequence[LayerInfo], policy: Policy) -> CostReport:
        """Per-layer and total costs of ``policy`` on the layers of ``inventory``."""
        rows = []
        for layer in inventory:
            bits = policy.layers.get(layer.name)
            if bits is None:
                raise UserError(f"policy has no bits for layer '{layer.name}'")
            rows.append(self.layer_cost(layer, bits.w_bits, bits.a_bits))
        return CostReport(self.name, self.metric, tuple(rows))

    def total(self, inventory: Sequence[LayerInfo], policy: Policy) -> float:
        """The policy's primary-metric total (the scalar a search optimizes)."""
        return self.cost(inventory, policy).cost

    @abstractmethod
    def layer_cost(self, layer: LayerInfo, w_bits: int, a_bits: int) -> LayerCost:
        """One layer's cost at ``w_bits`` weights and ``a_bits`` input activations."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, metric={self.metric!r})"


def positive(name: str, **values: float) -> None:
    """Raise a one-line UserError unless every value is > 0 (``name`` is the preset)."""
    for key, value in values.items():
        if not value > 0:
            raise UserError(f"hardware '{name}': {key} must be positive, got {value}")

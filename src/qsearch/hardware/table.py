"""A policy's cost under several presets, relative to uniform 8-bit, as data and as rich tables.

``qsearch cost`` and ``qsearch evaluate`` print these; the search reads the reports directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.table import Table

from qsearch.hardware.base import METRIC_FIELDS, METRICS, CostModel, CostReport
from qsearch.hardware.presets import build_cost_model, preset_names
from qsearch.models.inventory import LayerInfo
from qsearch.quant.policy import Policy

REFERENCE_BITS = 8
_UNITS = {"latency": "s", "energy": "J", "size": "B", "bitops": ""}
_HEADERS = {"latency": "latency", "energy": "energy", "size": "size", "bitops": "BitOPs"}
_PREFIXES = tuple(zip((1e12, 1e9, 1e6, 1e3, 1.0, 1e-3, 1e-6, 1e-9), "TGMk mµn", strict=True))


@dataclass(frozen=True)
class PresetCost:
    """A policy's report under one preset, and the report of uniform 8-bit (the reference)."""

    report: CostReport
    reference: CostReport

    @property
    def preset(self) -> str:
        return self.report.model

    def value(self, metric: str) -> float | None:
        """The policy's total ``metric`` (s, J, bytes, BitOPs); None if not modelled."""
        return self.report.totals()[METRIC_FIELDS[metric]]

    def ratio(self, metric: str) -> float | None:
        """Policy / uniform 8-bit for ``metric`` (below 1 = cheaper); None if not modelled."""
        value, reference = self.value(metric), self.reference.totals()[METRIC_FIELDS[metric]]
        return None if value is None or reference is None else value / reference

    def as_dict(self) -> dict[str, Any]:
        return {
            "preset": self.preset,
            "metric": self.report.metric,
            "totals": self.report.totals(),
            "reference_totals": self.reference.totals(),
            "ratio_vs_uniform8": {metric: self.ratio(metric) for metric in METRICS},
            "layers": self.report.as_dict()["layers"],
        }


def reference_policy(
    policy: Policy, inventory: Sequence[LayerInfo], pin_first_last: int | None = REFERENCE_BITS
) -> Policy:
    """Uniform 8-bit weights and activations, first and last layer at ``pin_first_last``."""
    names = [layer.name for layer in inventory]
    return Policy.uniform(
        policy.model, policy.dataset, names, REFERENCE_BITS, REFERENCE_BITS, pin_first_last
    )


def cost_table(
    inventory: Sequence[LayerInfo],
    policy: Policy,
    presets: Sequence[CostModel | str] | None = None,
    pin_first_last: int | None = REFERENCE_BITS,
) -> list[PresetCost]:
    """``policy``'s cost under each preset (default: every preset but ``lut``), each with the
    cost of uniform 8-bit (first/last layer at ``pin_first_last``) for comparison."""
    models = [
        build_cost_model(p) if isinstance(p, str) else p
        for p in (preset_names() if presets is None else presets)
    ]
    reference = reference_policy(policy, inventory, pin_first_last)
    return [
        PresetCost(model.cost(inventory, policy), model.cost(inventory, reference))
        for model in models
    ]


def format_value(metric: str, value: float | None) -> str:
    """``value`` with an SI prefix (``1.23 ms``, ``45.6 µJ``, ``12 kB``, ``1.4 G``), or ``-``."""
    if value is None:
        return "-"
    scale, prefix = next(((s, p) for s, p in _PREFIXES if abs(value) >= s), _PREFIXES[-1])
    return f"{value / scale:.3g} {prefix.strip()}{_UNITS[metric]}".rstrip()


def rich_cost_table(rows: Sequence[PresetCost], title: str, primary: str | None = None) -> Table:
    """One row per preset; per metric the total and its ratio to uniform 8-bit. Each
    preset's own metric is bold; the ``primary`` preset is marked with ``*``."""
    caption = "ratio: policy / uniform 8-bit (lower is cheaper); latency, energy: one batch"
    table = Table(title=title, caption=caption)
    table.add_column("hardware")
    for metric in METRICS:
        table.add_column(_HEADERS[metric], justify="right")
        table.add_column("ratio", justify="right")
    for row in rows:
        cells = [row.preset + (" *" if row.preset == primary else "")]
        for metric in METRICS:
            ratio = row.ratio(metric)
            pair = [
                format_value(metric, row.value(metric)),
                "-" if ratio is None else f"{ratio:.3f}",
            ]
            bold = metric == row.report.metric
            cells += [f"[bold]{cell}[/bold]" if bold else cell for cell in pair]
        table.add_row(*cells)
    return table


def rich_layer_table(row: PresetCost) -> Table:
    """Per-layer bits, latency, energy and (roofline models) the bound of one preset."""
    table = Table(title=f"per layer under {row.preset}")
    for header in ("layer", "w/a bits", "latency", "energy", "size", "BitOPs", "bound"):
        table.add_column(header, justify="left" if header == "layer" else "right")
    for layer in row.report.layers:
        table.add_row(
            layer.name,
            f"{layer.w_bits}/{layer.a_bits}",
            format_value("latency", layer.latency_s),
            format_value("energy", layer.energy_j),
            format_value("size", layer.size_bytes),
            format_value("bitops", layer.bitops),
            layer.bound or "-",
        )
    return table

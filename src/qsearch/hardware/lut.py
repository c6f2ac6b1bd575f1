"""A measured lookup table: each layer's latency and/or energy at each (w_bits, a_bits).

Two formats:

* ``.npy``: HAQ's format, an array ``[layers, w_bits, a_bits]`` where
  ``table[l, w - 1, a - 1]`` is layer ``l``'s cost (in forward order) at ``w``/``a`` bits.
  It holds one quantity (``quantity``: latency or energy); HAQ's tables are latency in ms.
* ``.csv`` with a header ``layer,w_bits,a_bits,latency,energy`` (either of the last two
  may be left out): one row per layer name and bit pair.

Values times ``scale`` are seconds (latency) or joules (energy). A table that does not fit
the model (layer count, layer names, a missing entry) is a one-line UserError.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from qsearch.errors import UserError
from qsearch.hardware.base import METRIC_FIELDS, CostModel, CostReport, LayerCost, base_cost
from qsearch.models.inventory import LayerInfo
from qsearch.quant.policy import Policy

QUANTITIES = ("latency", "energy")


class LookupTable(CostModel):
    """Per-layer latency (s) and/or energy (J) read from a user's table; plus size, BitOPs.

    Args:
        path: the ``.npy`` or ``.csv`` table.
        quantity: what a ``.npy`` table holds, latency or energy (a CSV names its columns).
        scale: seconds (or joules) per table unit, e.g. ``1e-3`` for HAQ's ms tables.
        name / metric: the preset's name and primary metric.

    Example::

        LookupTable("haq_latency.npy", scale=1e-3).cost(inventory, policy).total()  # s
    """

    def __init__(
        self,
        path: str,
        quantity: str = "latency",
        scale: float = 1.0,
        name: str = "lut",
        metric: str = "latency",
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"lookup table not found: {self.path}")
        if self.path.suffix == ".npy":
            if quantity not in QUANTITIES:
                raise UserError(f"lut quantity must be latency or energy, got {quantity!r}")
            self._array: np.ndarray | None = _load_npy(self.path) * float(scale)
            self._rows: dict[str, dict[tuple[int, int], dict[str, float]]] = {}
            self.quantities: tuple[str, ...] = (quantity,)
        elif self.path.suffix == ".csv":
            self._array = None
            self._rows, self.quantities = _load_csv(self.path, float(scale))
        else:
            raise UserError(f"lookup table {self.path} must be a .npy or .csv file")
        self.provides = ("size", "bitops", *self.quantities)
        super().__init__(name, metric)

    def cost(self, inventory: Sequence[LayerInfo], policy: Policy) -> CostReport:
        """Check the table against ``inventory``, then look every layer up."""
        names = [layer.name for layer in inventory]
        if self._array is not None and self._array.shape[0] != len(names):
            raise UserError(
                f"lookup table {self.path} has {self._array.shape[0]} layers, "
                f"the model has {len(names)}"
            )
        unknown = [name for name in self._rows if name not in names]
        missing = [name for name in names if self._rows and name not in self._rows]
        if unknown:
            raise UserError(
                f"lookup table {self.path} names layer '{unknown[0]}', which the model does "
                f"not have (its layers: {', '.join(names)})"
            )
        if missing:
            raise UserError(f"lookup table {self.path} has no rows for layer '{missing[0]}'")
        return super().cost(inventory, policy)

    def layer_cost(self, layer: LayerInfo, w_bits: int, a_bits: int) -> LayerCost:
        values = self._lookup(layer, w_bits, a_bits)
        return base_cost(layer, w_bits, a_bits, **{METRIC_FIELDS[q]: v for q, v in values.items()})

    def _lookup(self, layer: LayerInfo, w_bits: int, a_bits: int) -> dict[str, float]:
        if self._array is None:
            entry = self._rows[layer.name].get((w_bits, a_bits))
        else:
            _, w_max, a_max = self._array.shape
            inside = 1 <= w_bits <= w_max and 1 <= a_bits <= a_max
            value = self._array[layer.index, w_bits - 1, a_bits - 1] if inside else None
            entry = None if value is None else {self.quantities[0]: float(value)}
        if entry is None:
            raise UserError(
                f"lookup table {self.path} has no entry for layer '{layer.name}' at "
                f"w_bits={w_bits}, a_bits={a_bits}"
            )
        return entry


def _load_npy(path: Path) -> np.ndarray:
    try:
        table = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read lookup table {path}: {exc}") from exc
    if table.ndim != 3 or not np.issubdtype(table.dtype, np.number):
        raise UserError(
            f"lookup table {path} must be a numeric [layers, w_bits, a_bits] array, "
            f"got shape {table.shape} of {table.dtype}"
        )
    if not np.isfinite(table).all():
        raise UserError(f"lookup table {path} holds NaN or infinite values")
    return table.astype(np.float64)


def _load_csv(
    path: Path, scale: float
) -> tuple[dict[str, dict[tuple[int, int], dict[str, float]]], tuple[str, ...]]:
    """Rows of a ``layer,w_bits,a_bits,latency,energy`` CSV: ``{layer: {(w, a): values}}``."""
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        quantities = tuple(q for q in QUANTITIES if q in header)
        if not {"layer", "w_bits", "a_bits"} <= set(header) or not quantities:
            raise UserError(
                f"lookup table {path} needs a header layer,w_bits,a_bits,latency,energy "
                f"(got {','.join(header)})"
            )
        rows: dict[str, dict[tuple[int, int], dict[str, float]]] = {}
        for line, row in enumerate(reader, start=2):
            try:
                key = (int(row["w_bits"]), int(row["a_bits"]))
                values = {q: float(row[q]) * scale for q in quantities}
            except (TypeError, ValueError) as exc:
                raise UserError(f"lookup table {path}, line {line}: {exc}") from exc
            entries = rows.setdefault(row["layer"], {})
            if key in entries:
                raise UserError(f"lookup table {path}, line {line}: duplicate entry {key}")
            entries[key] = values
    if not rows:
        raise UserError(f"lookup table {path} has no rows")
    return rows, quantities

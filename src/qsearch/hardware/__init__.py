"""Hardware cost models (SPEC section 4): ``cost(inventory, policy) -> CostReport``.

Models: :class:`~.bitops.BitOps`, :class:`~.size.ModelSize`, :class:`~.bitserial.BitSerial`,
:class:`~.bitfusion.BitFusion` (both under a memory roofline) and :class:`~.lut.LookupTable`.
Presets are YAML files in ``conf/hardware/``::

    model = build_cost_model("bitfusion_edge")         # or build_cost_model(cfg.hardware)
    report = model.cost(inventory, policy)
    report.cost, report.total("energy"), report.per_layer("latency")
    cost_table(inventory, policy)                      # every preset vs uniform 8-bit
"""

from qsearch.hardware.base import METRICS, CostModel, CostReport, LayerCost
from qsearch.hardware.presets import build_cost_model, load_preset, preset_names
from qsearch.hardware.table import (
    PresetCost,
    cost_table,
    reference_policy,
    rich_cost_table,
    rich_layer_table,
)

__all__ = [
    "METRICS",
    "CostModel",
    "CostReport",
    "LayerCost",
    "PresetCost",
    "build_cost_model",
    "cost_table",
    "load_preset",
    "preset_names",
    "reference_policy",
    "rich_cost_table",
    "rich_layer_table",
]

"""The search's view of a hardware cost model (``conf/hardware/``)."""

from __future__ import annotations

from omegaconf import DictConfig

from qsearch.env.space import CostOracle
from qsearch.hardware import build_cost_model
from qsearch.models.inventory import LayerInfo
from qsearch.quant.policy import Policy


def cost_oracle(hardware_cfg: DictConfig, inventory: list[LayerInfo]) -> CostOracle:
    """Wrap the preset's cost model: per-layer primary metric and every computed total."""
    model = build_cost_model(hardware_cfg)

    def per_layer(policy: Policy) -> list[float]:
        return model.cost(inventory, policy).per_layer()

    def metrics(policy: Policy) -> dict[str, float]:
        totals = model.cost(inventory, policy).totals()
        return {key: value for key, value in totals.items() if value is not None}

    return CostOracle(metric=model.metric, per_layer=per_layer, metrics=metrics)

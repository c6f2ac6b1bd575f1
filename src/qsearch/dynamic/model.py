"""The dynamic network: a quantized backbone whose dynamic layers take per-sample bits.

The controller is attached as a forward pre-hook of the first dynamic layer: when the
backbone reaches it, the static prefix has run, and its output (that layer's input) is
what the controller reads. The hook samples the choices and hands each dynamic layer its
``(N, K)`` slice, so the backbone's own ``forward`` runs unchanged (any architecture works).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from qsearch.dynamic.controller import BitController, choose
from qsearch.dynamic.cost import BitCost
from qsearch.dynamic.layers import DynamicLayer, make_dynamic
from qsearch.dynamic.settings import DynamicPlan, DynamicSettings
from qsearch.models.inventory import LayerInfo
from qsearch.quant.layers import QuantizerSpec, quantize_model
from qsearch.quant.policy import Policy


class DynamicQuantModel(nn.Module):
    """``backbone(x)`` with the controller choosing each dynamic layer's bits per sample.

    After a forward pass, :attr:`last_choice` holds the one-hot choices ``(N, L, K)`` of
    that batch (hard Gumbel-Softmax samples in training, argmax in eval mode); feed it to
    :attr:`cost` for the per-sample BitOPs.
    """

    def __init__(
        self,
        backbone: nn.Module,
        controller: BitController,
        cost: BitCost,
        layer_names: Sequence[str],
        tau: float,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.controller = controller
        self.cost = cost
        self.layer_names = list(layer_names)
        self.tau = tau
        self.last_choice: Tensor | None = None
        first = backbone.get_submodule(self.layer_names[0])
        first.register_forward_pre_hook(self._choose)

    def dynamic_layers(self) -> list[DynamicLayer]:
        """The dynamic layers, in the controller's output order."""
        return [self.backbone.get_submodule(name) for name in self.layer_names]  # type: ignore[misc]

    def _choose(self, module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        choice = choose(self.controller(inputs[0]), self.tau, self.training)
        for layer, layer_choice in zip(self.dynamic_layers(), choice.unbind(1), strict=True):
            layer.choice = layer_choice
        self.last_choice = choice

    def forward(self, x: Tensor) -> Tensor:
        try:
            return self.backbone(x)
        finally:
            for layer in self.dynamic_layers():
                layer.choice = None  # do not keep the batch's graph alive


def build_dynamic(
    float_model: nn.Module,
    inventory: Sequence[LayerInfo],
    base: Policy,
    plan: DynamicPlan,
    spec: QuantizerSpec,
    settings: DynamicSettings,
) -> DynamicQuantModel:
    """Quantize ``float_model`` in place: static layers at their bits, the rest dynamic.

    ``inventory`` is the float model's; the controller's input shape is the first dynamic
    layer's input. Quantizers initialize on the first forward pass (see ``calibrate``).
    """
    quantize_model(float_model, plan.static_policy(base), spec)
    make_dynamic(float_model, plan.dynamic, spec)
    first = next(layer for layer in inventory if layer.name in plan.dynamic)
    in_shape = (
        (first.in_channels, *first.input_size) if first.kind == "conv" else (first.in_channels,)
    )
    controller = BitController(
        in_shape, len(plan.dynamic), plan.choices, settings.hidden, settings.pool, settings.prior()
    ).to(next(float_model.parameters()).device)
    cost = BitCost(inventory, plan, base)
    return DynamicQuantModel(float_model, controller, cost, list(plan.dynamic), settings.tau)

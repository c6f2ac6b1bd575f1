"""The layer inventory: shapes, parameters and MACs of every quantizable layer.

Every cost model and the search environment read this, never the model directly. It is
computed from one forward pass on a dummy input, so any ``nn.Module`` works, including
models with branches or functional ops between layers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

QUANTIZABLE = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class LayerInfo:
    """One quantizable layer (``Conv2d`` or ``Linear``), in forward order.

    Sizes are in elements; ``input_size``/``output_size`` are ``(H, W)`` of the feature map
    (``(1, 1)`` for a linear layer on a flat vector). ``macs`` counts multiply-accumulates
    for one input sample.
    """

    index: int
    name: str
    kind: str  # "conv" or "linear"
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: int
    groups: int
    input_size: tuple[int, int]
    output_size: tuple[int, int]
    weight_params: int
    bias_params: int
    macs: int

    @property
    def params(self) -> int:
        """Weights plus biases."""
        return self.weight_params + self.bias_params

    @property
    def is_depthwise(self) -> bool:
        """A grouped conv with one input channel per group (MobileNet's depthwise conv)."""
        return self.kind == "conv" and self.groups > 1 and self.groups == self.in_channels

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "params": self.params, "is_depthwise": self.is_depthwise}


def _spatial(t: Tensor) -> tuple[int, int]:
    if t.dim() == 4:
        return int(t.shape[-2]), int(t.shape[-1])
    return 1, 1


def _positions(output: Tensor, out_features: int) -> int:
    """How many output positions share one weight set (H*W for convs, tokens for linear)."""
    return output.numel() // (output.shape[0] * out_features)


@torch.no_grad()
def layer_inventory(model: nn.Module, input_shape: tuple[int, int, int]) -> list[LayerInfo]:
    """Run one dummy ``(1, C, H, W)`` sample through ``model`` and describe each layer.

    Layers are listed in the order they first run; a layer called twice is listed once.
    The model's train/eval mode and batch-norm statistics are left untouched.
    """
    names = {module: name for name, module in model.named_modules()}
    seen: list[LayerInfo] = []
    visited: set[nn.Module] = set()

    def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        if module in visited:
            return
        visited.add(module)
        x = inputs[0]
        if isinstance(module, nn.Conv2d):
            kind, c_in, c_out = "conv", module.in_channels, module.out_channels
            kernel = (int(module.kernel_size[0]), int(module.kernel_size[1]))
            stride, groups = int(module.stride[0]), int(module.groups)
        else:
            kind, c_in, c_out = "linear", module.in_features, module.out_features
            kernel, stride, groups = (1, 1), 1, 1
        weight = module.weight.numel()
        seen.append(
            LayerInfo(
                index=len(seen),
                name=names[module],
                kind=kind,
                in_channels=int(c_in),
                out_channels=int(c_out),
                kernel_size=kernel,
                stride=stride,
                groups=groups,
                input_size=_spatial(x),
                output_size=_spatial(output),
                weight_params=int(weight),
                bias_params=0 if module.bias is None else int(module.bias.numel()),
                macs=int(weight * _positions(output, c_out)),
            )
        )

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, QUANTIZABLE)]
    was_training = model.training
    device = next(model.parameters()).device
    try:
        model.eval()
        model(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    if not seen:
        raise ValueError(f"{type(model).__name__} has no Conv2d or Linear layer to quantize")
    return seen

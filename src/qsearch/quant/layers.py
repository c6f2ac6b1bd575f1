"""Quantized ``Conv2d``/``Linear`` and :func:`quantize_model`, which applies a policy.

The quantized layers subclass ``nn.Conv2d``/``nn.Linear`` (so the layer inventory and any
code that looks for convs keep working) and share the float layer's parameters.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from qsearch.config import instantiate_checked
from qsearch.quant.base import Quantizer, Role
from qsearch.quant.policy import Policy

QuantizerFactory = Callable[..., Quantizer]


class QuantConv2d(nn.Conv2d):
    """``Conv2d`` whose weights and input activations pass through quantizers."""

    weight_quant: Quantizer
    act_quant: Quantizer

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self.act_quant(x), self.weight_quant(self.weight), self.bias)


class QuantLinear(nn.Linear):
    """``Linear`` whose weights and input activations pass through quantizers."""

    weight_quant: Quantizer
    act_quant: Quantizer

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(self.act_quant(x), self.weight_quant(self.weight), self.bias)


QuantLayer = QuantConv2d | QuantLinear


@dataclass(frozen=True)
class QuantizerSpec:
    """A quantizer config (``conf/quantizer/<name>.yaml``): factories for both roles.

    Each factory is called as ``factory(bits=..., role=..., channels=...)``.
    """

    name: str
    weight: QuantizerFactory
    activation: QuantizerFactory

    @classmethod
    def from_config(cls, cfg: DictConfig) -> QuantizerSpec:
        """Build from a quantizer config whose ``weight``/``activation`` are ``_partial_``."""
        return cls(
            name=str(cfg.name),
            weight=instantiate_checked(cfg.weight),
            activation=instantiate_checked(cfg.activation),
        )

    def identity(self) -> dict[str, Any]:
        """What sets the quantizer's numbers: its name and each role's class and settings
        (for cache keys: ``name`` alone misses e.g. ``activation.step_init``)."""
        return {
            "name": self.name,
            "weight": _factory_settings(self.weight),
            "activation": _factory_settings(self.activation),
        }

    def make(self, role: Role, bits: int, channels: int = 1) -> Quantizer:
        factory = self.weight if role == "weight" else self.activation
        return factory(bits=bits, role=role, channels=channels)


def _factory_settings(factory: QuantizerFactory) -> dict[str, Any] | str:
    """``{"class": ..., **keywords}`` of a ``functools.partial`` factory, else its repr."""
    if isinstance(factory, functools.partial):
        func = factory.func
        return {"class": f"{func.__module__}.{func.__qualname__}", **factory.keywords}
    return repr(factory)


def empty_twin(layer: nn.Module, conv_cls: type[nn.Conv2d], linear_cls: type[nn.Linear]) -> Any:
    """An uninitialized (meta-device) ``conv_cls``/``linear_cls`` shaped like ``layer``."""
    if isinstance(layer, nn.Conv2d):
        return conv_cls(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            layer.stride,
            layer.padding,
            layer.dilation,
            layer.groups,
            layer.bias is not None,
            layer.padding_mode,
            device="meta",
        )
    if isinstance(layer, nn.Linear):
        return linear_cls(
            layer.in_features, layer.out_features, layer.bias is not None, device="meta"
        )
    raise TypeError(f"cannot quantize {type(layer).__name__}")


def _quantized_twin(layer: nn.Module, weight_quant: Quantizer, act_quant: Quantizer) -> QuantLayer:
    twin: QuantLayer = empty_twin(layer, QuantConv2d, QuantLinear)
    twin.weight = layer.weight
    twin.bias = layer.bias
    twin.weight_quant = weight_quant.to(layer.weight.device)
    twin.act_quant = act_quant.to(layer.weight.device)
    twin.train(layer.training)
    return twin


def quantize_model(model: nn.Module, policy: Policy, spec: QuantizerSpec) -> nn.Module:
    """Swap every layer named in ``policy`` for its quantized twin, in place; return ``model``.

    Layers already quantized are rebuilt from their float parameters. Quantizer state
    (steps, ranges) is initialized lazily on the first forward pass (see
    :func:`calibrate`), or loaded with a quantized checkpoint's state dict.
    """
    for name, bits in policy.layers.items():
        layer = model.get_submodule(name)
        weight_quant = spec.make("weight", bits.w_bits, channels=layer.weight.shape[0])
        act_quant = spec.make("activation", bits.a_bits)
        model.set_submodule(name, _quantized_twin(layer, weight_quant, act_quant))
    return model


def quant_layers(model: nn.Module) -> Iterator[tuple[str, QuantLayer]]:
    """The quantized layers of ``model`` with their names, in module order."""
    for name, module in model.named_modules():
        if isinstance(module, QuantConv2d | QuantLinear):
            yield name, module


def set_policy_bits(model: nn.Module, policy: Policy) -> None:
    """Change the bits of an already quantized model (quantizers re-initialize lazily)."""
    for name, bits in policy.layers.items():
        layer = model.get_submodule(name)
        if not isinstance(layer, QuantConv2d | QuantLinear):
            raise TypeError(f"layer {name} is not quantized")
        layer.weight_quant.set_bits(bits.w_bits)
        layer.act_quant.set_bits(bits.a_bits)


@torch.no_grad()
def calibrate(model: nn.Module, images: Tensor) -> None:
    """Initialize every quantizer from one batch: weight steps/ranges and activation ranges.

    Runs in eval mode, so batch-norm statistics are untouched.
    """
    was_training = model.training
    model.eval()
    try:
        model(images)
    finally:
        model.train(was_training)

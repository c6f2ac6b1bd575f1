"""Dynamic quantized ``Conv2d``/``Linear``: K candidate bitwidths, one chosen per sample.

Each layer holds K weight quantizers and K activation quantizers; the controller's one-hot
choice ``m`` (``(N, K)``) says which one each sample uses. The layer computes
``out = sum_k m[:, k] * out_k`` with ``out_k = layer(Q_a^k(x), Q_w^k(W))`` (Liu et al.,
CVPR 2022, eq. 4): with a hard one-hot each sample gets exactly the output of its chosen
bits, and under the straight-through Gumbel-Softmax the choice gets the gradient
``dL/dm[:, k] = <dL/d out, out_k>``, which trains the controller.

Written that way, all K branches would run forward and backward on every sample although
only the chosen one receives a gradient. So the value (and the gradient of the weights and
quantizers) comes from each candidate run on the samples that chose it, and the K full
outputs, needed only for the choice's gradient, are computed without autograd:
``out = routed + sum_k (m_k - detach(m_k)) * detach(out_k)``. Same values, same gradients,
about twice the work of a static layer instead of K times. At inference only ``routed``
runs.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from qsearch.quant.base import Quantizer
from qsearch.quant.layers import QuantizerSpec, empty_twin
from qsearch.quant.policy import LayerBits


class _Dynamic(nn.Module):
    """What the two dynamic layer types share: quantizer lists, the choice and the mix."""

    weight: Tensor
    weight_quants: nn.ModuleList
    act_quants: nn.ModuleList
    candidates: tuple[LayerBits, ...]
    choice: Tensor | None  # (N, K) one-hot of the current batch, set by the model

    def _apply_layer(self, x: Tensor, weight: Tensor) -> Tensor:
        raise NotImplementedError

    def _candidate(self, k: int, x: Tensor) -> Tensor:
        """The layer at candidate ``k``'s bits on ``x``."""
        return self._apply_layer(self.act_quants[k](x), self.weight_quants[k](self.weight))

    def _routed(self, x: Tensor, picked: Tensor) -> Tensor:
        """Each sample through its own candidate ``picked[n]`` only."""
        rows = [(picked == k).nonzero().squeeze(1) for k in range(len(self.candidates))]
        parts = [self._candidate(k, x[r]) for k, r in enumerate(rows) if r.numel()]
        return torch.cat(parts)[torch.cat(rows).argsort()]

    def forward(self, x: Tensor) -> Tensor:
        if self.choice is None:
            raise RuntimeError("a dynamic layer runs inside DynamicQuantModel (no choice set)")
        choice = self.choice
        quantizers = [*self.weight_quants, *self.act_quants]
        full: list[Tensor] = []
        if choice.requires_grad or not all(bool(q.initialized) for q in quantizers):
            # every candidate on every sample: the choice's gradient, and the lazy
            # initialization of the quantizers (which must all see the first batch)
            with torch.no_grad():
                full = [self._candidate(k, x) for k in range(len(self.candidates))]
        routed = self._routed(x, choice.argmax(-1))
        if not choice.requires_grad:
            return routed
        stacked = torch.stack(full)  # (K, N, ...)
        mask = choice.t().to(stacked.dtype)
        mask = (mask - mask.detach()).view(*mask.shape, *([1] * (stacked.dim() - 2)))
        return routed + (mask * stacked).sum(0)


class DynamicConv2d(_Dynamic, nn.Conv2d):
    """``Conv2d`` at per-sample bits chosen among K candidates."""

    def _apply_layer(self, x: Tensor, weight: Tensor) -> Tensor:
        return self._conv_forward(x, weight, self.bias)


class DynamicLinear(_Dynamic, nn.Linear):
    """``Linear`` at per-sample bits chosen among K candidates."""

    def _apply_layer(self, x: Tensor, weight: Tensor) -> Tensor:
        return nn.functional.linear(x, weight, self.bias)


DynamicLayer = DynamicConv2d | DynamicLinear


def _dynamic_twin(
    layer: nn.Module, candidates: tuple[LayerBits, ...], spec: QuantizerSpec
) -> DynamicLayer:
    twin: DynamicLayer = empty_twin(layer, DynamicConv2d, DynamicLinear)
    device = layer.weight.device
    channels = layer.weight.shape[0]
    weights: list[Quantizer] = [spec.make("weight", b.w_bits, channels) for b in candidates]
    acts: list[Quantizer] = [spec.make("activation", b.a_bits) for b in candidates]
    twin.weight, twin.bias = layer.weight, layer.bias
    twin.weight_quants = nn.ModuleList(weights).to(device)
    twin.act_quants = nn.ModuleList(acts).to(device)
    twin.candidates = candidates
    twin.choice = None
    twin.train(layer.training)
    return twin


def make_dynamic(
    model: nn.Module, candidates: Mapping[str, tuple[LayerBits, ...]], spec: QuantizerSpec
) -> list[DynamicLayer]:
    """Swap each layer named in ``candidates`` for its dynamic twin, in place.

    Returns the dynamic layers in the order of ``candidates``; they share the float
    layers' parameters, and their quantizers initialize lazily on the first forward pass.
    """
    layers = []
    for name, bits in candidates.items():
        twin = _dynamic_twin(model.get_submodule(name), bits, spec)
        model.set_submodule(name, twin)
        layers.append(twin)
    return layers

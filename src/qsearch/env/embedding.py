"""Per-layer state features of the two RL agents, min-max normalized over layers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from qsearch.models.inventory import LayerInfo


def minmax(columns: np.ndarray) -> np.ndarray:
    """Scale each column to [0, 1] over the rows (a constant column becomes 0)."""
    low, high = columns.min(axis=0), columns.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    return ((columns - low) / span).astype(np.float32)


def weight_std(model: nn.Module, inventory: Sequence[LayerInfo]) -> list[float]:
    """Standard deviation of each layer's float weights (ReLeQ's second-best feature)."""
    with torch.no_grad():
        return [float(model.get_submodule(layer.name).weight.float().std()) for layer in inventory]


def releq_layer_features(inventory: Sequence[LayerInfo], stds: Sequence[float]) -> np.ndarray:
    """ReLeQ's static per-layer features: out channels, in channels, kernel size, weight
    std, each min-max normalized over the layers; shape ``(layers, 4)``."""
    raw = np.array(
        [
            [layer.out_channels, layer.in_channels, layer.kernel_size[0], std]
            for layer, std in zip(inventory, stds, strict=True)
        ],
        dtype=np.float64,
    )
    return minmax(raw)


def haq_layer_features(inventory: Sequence[LayerInfo]) -> np.ndarray:
    """HAQ's static per-layer features (Wang et al., CVPR 2019, sec. 3.1), shape
    ``(layers, 8)``, min-max normalized: ``(k, c_in, c_out, kernel, stride, feature-map
    size, params, is_depthwise)``; a linear layer is ``(k, h_in, h_out, 1, 0, 1, params, 0)``.
    The env appends ``is_weight`` and the previous action per step."""
    rows = []
    for layer in inventory:
        if layer.kind == "linear":
            rows.append(
                [
                    layer.index,
                    layer.in_channels,
                    layer.out_channels,
                    1,
                    0,
                    1,
                    layer.weight_params,
                    0,
                ]
            )
        else:
            rows.append(
                [
                    layer.index,
                    layer.in_channels,
                    layer.out_channels,
                    layer.kernel_size[0],
                    layer.stride,
                    layer.input_size[0],
                    layer.weight_params,
                    float(layer.is_depthwise),
                ]
            )
    return minmax(np.array(rows, dtype=np.float64))

"""HAQ's linear weight quantizer with a KL-divergence-chosen clip (Wang et al., CVPR 2019).

Symmetric linear quantization: ``w_q = round(clip(w, -c, c) / delta) * delta`` with
``delta = c / (2^(b-1) - 1)``: a mid-tread grid, zero is a level (HAQ sec. 3.1). Below
``kl_below_bits`` bits the clip ``c`` minimizes ``KL(P || Q)`` between the histogram ``P``
of ``|w|`` (outliers folded into its last bin) and its quantized version ``Q`` (each level's
mass spread over the level's non-empty bins), the TensorRT-style calibration HAQ uses; at
higher bitwidths ``c = max|w|``. ``c`` is computed once, from the weights, and kept as a
buffer. Round is straight-through; weights beyond ``c`` get no gradient.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from qsearch.quant._clip import MIN_RANGE, clip_grid, snap_ste
from qsearch.quant.base import Quantizer, Role, UniformGrid

MAX_BINS = 2048
EMPTY_BIN_MASS = 1e-12


def kl_clip(x: Tensor, bits: int, max_bins: int = MAX_BINS) -> float:
    """The clip ``c`` of ``x`` (a bin edge of the ``|x|`` histogram) minimizing ``KL(P || Q)``.

    The histogram of ``|x|`` on ``[0, max|x|]`` has ``sqrt(numel)`` bins (at least 4 per
    level, at most ``max_bins``). Returns ``max|x|`` when no smaller clip does better.
    """
    a = x.detach().abs().flatten().double().cpu().numpy()
    top = float(a.max())
    if top == 0.0:
        return 0.0
    n = 2 ** (bits - 1) - 1  # levels above zero
    bins = min(max_bins, max(math.isqrt(a.size), 4 * (n + 1)))
    hist = np.histogram(a, bins=bins, range=(0.0, top))[0].astype(np.float64)
    best, best_kl = bins, math.inf
    for i in range(n + 1, bins + 1):  # clip at the right edge of bin i - 1
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()
        nonzero = p > 0
        level = np.rint((np.arange(i) + 0.5) * n / i).astype(np.int64)
        mass = np.bincount(level, weights=hist[:i], minlength=n + 1)
        filled = np.bincount(level, weights=nonzero, minlength=n + 1)
        q = np.where(nonzero, mass[level] / np.maximum(filled[level], 1), 0.0)
        p, q = p[nonzero] / p.sum(), q[nonzero] / max(q.sum(), EMPTY_BIN_MASS)
        kl = float(np.sum(p * np.log(p / np.maximum(q, EMPTY_BIN_MASS))))
        if kl < best_kl:
            best, best_kl = i, kl
    return top * best / bins


class LinearKlQuantizer(Quantizer):
    """HAQ linear weight quantizer: symmetric, clip by KL divergence below 5 bits.

    Args:
        bits: 2..8, or 32 (float).
        role: ``"weight"`` only (HAQ quantizes activations with a learned range: PACT).
        kl_below_bits: use the KL-chosen clip below this bitwidth, ``max|w|`` from it on.
    """

    name = "linear_kl"
    min_bits = 2
    roles: ClassVar[frozenset[str]] = frozenset({"weight"})
    zero_exact: ClassVar[frozenset[str]] = frozenset({"weight"})

    def __init__(
        self,
        bits: int,
        role: Role,
        signed: bool | None = None,
        channels: int = 1,
        kl_below_bits: int = 5,
    ) -> None:
        super().__init__(bits, role, signed, channels)
        self.kl_below_bits = kl_below_bits
        self.register_buffer("clip", torch.ones(1))

    def initialize(self, x: Tensor) -> None:
        """``c = argmin_c KL`` below ``kl_below_bits`` bits, else ``max|w|``."""
        c = kl_clip(x, self.bits) if self.bits < self.kl_below_bits else x.abs().max().item()
        self.clip.fill_(max(c, MIN_RANGE))

    def quantize(self, x: Tensor) -> Tensor:
        y = x.clamp(-self.clip if self.signed else torch.zeros_like(self.clip), self.clip)
        return snap_ste(y, self.clip, self.bits, self.signed)

    def grid(self) -> UniformGrid | None:
        return clip_grid(self.clip, self.bits, self.signed) if self.enabled else None

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, clip={self.clip.item():.4g}"

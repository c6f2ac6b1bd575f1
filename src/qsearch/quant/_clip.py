"""Shared pieces of the clip-then-round quantizers (WRPN, DoReFa, PACT, linear-KL).

These quantizers clip a tensor to ``[0, r]`` (unsigned) or ``[-r, r]`` (signed), then round
it to a uniform grid with the straight-through estimator. The grids:

- unsigned: ``2^b`` levels ``k * r / (2^b - 1)``, ``k = 0 .. 2^b - 1`` (zero is a level);
- signed, ``b >= 2``: mid-tread, ``2^b - 1`` levels ``k * r / n``, ``|k| <= n = 2^(b-1) - 1``
  (zero is a level; WRPN's weight grid);
- signed, ``b = 1``: ``{-r, r}`` (a mid-tread grid would need 3 levels).
"""

from __future__ import annotations

import torch
from torch import Tensor

from qsearch.quant.base import UniformGrid

MAX_INIT_SAMPLES = 65536
MIN_RANGE = 1e-8


def _grid_params(r: Tensor, bits: int, signed: bool) -> tuple[Tensor, Tensor | None, int, int]:
    """``(scale, offset, qmin, qmax)`` of the grid on ``[0, r]``/``[-r, r]``."""
    if not signed:
        return r / (2**bits - 1), None, 0, 2**bits - 1
    if bits == 1:
        return 2 * r, -r, 0, 1
    n = 2 ** (bits - 1) - 1
    return r / n, None, -n, n


def clip_grid(r: Tensor, bits: int, signed: bool) -> UniformGrid:
    """The grid of ``bits`` bits on ``[0, r]`` or ``[-r, r]`` (``r``: one element)."""
    scale, offset, qmin, qmax = _grid_params(r.detach().float().reshape(1), bits, signed)
    return UniformGrid(scale=scale, qmin=qmin, qmax=qmax, offset=offset)


def round_to_grid(y: Tensor, r: Tensor, bits: int, signed: bool) -> Tensor:
    """``y`` (already clipped) rounded to the grid of :func:`clip_grid`; no gradient.

    ``r`` broadcasts against ``y`` (one range, or one per row when searching ranges).
    """
    scale, offset, qmin, qmax = _grid_params(r.detach(), bits, signed)
    y = y.detach() if offset is None else y.detach() - offset
    q = torch.round(y / scale).clamp(qmin, qmax) * scale
    return q if offset is None else q + offset


def snap_ste(y: Tensor, r: Tensor, bits: int, signed: bool) -> Tensor:
    """``y`` rounded to the grid forward, identity gradient (straight-through estimator).

    Written ``q + (y - y.detach())`` so the forward value is exactly the grid value ``q``.
    """
    return round_to_grid(y, r, bits, signed) + (y - y.detach())


def subsample(x: Tensor, limit: int = MAX_INIT_SAMPLES) -> Tensor:
    """``x`` flattened, or ``limit`` of its elements drawn at random (fixed seed) if larger."""
    flat = x.detach().flatten()
    if flat.numel() <= limit:
        return flat
    generator = torch.Generator().manual_seed(0)
    index = torch.randint(flat.numel(), (limit,), generator=generator)
    return flat[index.to(flat.device)]


def mse_best_clip(x: Tensor, bits: int, signed: bool, candidates: int = 32) -> Tensor:
    """The range ``r`` among ``max|x| * k / candidates`` minimizing the quantization MSE.

    The error of ``r`` is ``mean((Q_r(x) - x)^2)`` with ``Q_r`` the clip to ``[0, r]`` or
    ``[-r, r]`` and rounding of :func:`round_to_grid`. Returns a 1-element tensor.
    """
    sample = subsample(x).float()
    steps = torch.arange(1, candidates + 1, device=x.device, dtype=torch.float32)
    r = (sample.abs().max() * steps / candidates).clamp_min(MIN_RANGE).unsqueeze(1)
    clipped = torch.minimum(torch.maximum(sample, -r if signed else torch.zeros_like(r)), r)
    errors = (round_to_grid(clipped, r, bits, signed) - sample).pow(2).mean(1)
    return r[errors.argmin()].reshape(1)

"""Fake-quantization kernels, eager or compiled with ``torch.compile`` (``runtime.compile``).

In eager PyTorch a fake-quantizer is a chain of elementwise ops (divide, clamp, round,
multiply, and their backward), each a full pass over the activation tensor: on a CPU it
costs more than the convolution it feeds. ``torch.compile`` (inductor) fuses the chain into
one loop forward and one backward. Compilation takes ~20 s once per process, so it pays
off for fine-tuning and long searches, not for a smoke run; it is off by default.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from qsearch.quant.base import round_ste

_settings = {"compile": False}
_compiled: dict[Callable[..., Tensor], Callable[..., Tensor]] = {}


def set_compile(enabled: bool) -> None:
    """Route the kernels of this module through ``torch.compile`` (process-wide)."""
    _settings["compile"] = bool(enabled)


def compile_enabled() -> bool:
    return _settings["compile"]


def compilable(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Call ``fn`` eagerly, or its ``torch.compile(dynamic=True)`` twin when enabled.

    Only activations take the compiled path: weights (``nn.Parameter``) are small, and
    dynamo would compile one graph per weight shape.
    """

    def dispatch(x: Tensor, *args: Any) -> Tensor:
        if not _settings["compile"] or isinstance(x, nn.Parameter):
            return fn(x, *args)
        if fn not in _compiled:
            # one graph per (rank, grad mode, requires_grad, signedness): ~8 per model
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
            _compiled[fn] = torch.compile(fn, dynamic=True)
        return _compiled[fn](x, *args)

    dispatch.__doc__ = fn.__doc__
    dispatch.__name__ = fn.__name__
    return dispatch


@compilable
def uniform_fake_quant(x: Tensor, step: Tensor, qmin: int, qmax: int) -> Tensor:
    """``round_ste(clamp(x / s, qmin, qmax)) * s``: LSQ's forward (Esser et al. 2020, eq. 1-2).

    Autograd gives LSQ's gradients (eq. 3): ``x`` gets 1 inside ``[qmin, qmax]`` and 0
    outside; ``step`` gets ``round(v) - v`` inside, ``qmin`` below and ``qmax`` above. The
    grid is computed in fp32 and the result returned in ``x``'s dtype (bf16 under autocast,
    which the next convolution would cast it to anyway), so the casts fuse into the kernel.
    """
    if not torch.is_grad_enabled():
        # evaluation: the same ops, in place on one buffer. Bitwise the same values (the
        # straight-through ``round_ste`` is exact forward), 5x faster on a CPU than a fresh
        # tensor per op (ResNet-20's supernet scores a policy in ~6 s instead of ~14 s)
        return torch.div(x.float(), step).clamp_(qmin, qmax).round_().mul_(step).to(x.dtype)
    return (round_ste(torch.clamp(x.float() / step, qmin, qmax)) * step).to(x.dtype)

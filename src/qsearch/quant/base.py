"""The quantizer interface shared by LSQ, LSQ+, WRPN, DoReFa, PACT, linear-KL and k-means.

A quantizer fake-quantizes one tensor (a layer's weights, or its input activations): the
output has the values of the quantized tensor, in float, with straight-through gradients.
32 bits means "not quantized" (identity). Quantizers compute in fp32 even inside bf16
autocast, so the quantization grid is exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from qsearch.errors import UserError
from qsearch.quant.policy import FLOAT_BITS

Role = Literal["weight", "activation"]


def round_ste(x: Tensor) -> Tensor:
    """``round(x)`` forward, identity gradient (the straight-through estimator)."""
    return (x.round() - x).detach() + x


def grad_scale(x: Tensor, scale: float) -> Tensor:
    """``x`` forward (exactly); its gradient multiplied by ``scale`` (LSQ's gradient scale)."""
    scaled = x * scale
    return x.detach() + (scaled - scaled.detach())


def signed_range(bits: int) -> tuple[int, int]:
    """``(Qn, Qp)`` of a signed grid: ``Qn = 2^(b-1)``, ``Qp = 2^(b-1) - 1`` (LSQ, sec. 2)."""
    return 2 ** (bits - 1), 2 ** (bits - 1) - 1


def unsigned_range(bits: int) -> tuple[int, int]:
    """``(Qn, Qp)`` of an unsigned grid: ``Qn = 0``, ``Qp = 2^b - 1``."""
    return 0, 2**bits - 1


@dataclass(frozen=True)
class UniformGrid:
    """Quantized values are ``scale * q + offset`` for integers ``qmin <= q <= qmax``.

    ``scale`` (and ``offset``) are 1-d: one element per tensor, or one per output channel
    (dim 0 of a weight); :meth:`along` shapes them to broadcast over a tensor.
    """

    scale: Tensor
    qmin: int
    qmax: int
    offset: Tensor | None = None

    def along(self, x: Tensor, value: Tensor) -> Tensor:
        """``value`` (``scale`` or ``offset``) reshaped to broadcast over ``x``."""
        return value.view(-1, *([1] * (x.dim() - 1))) if value.numel() > 1 else value

    def to_int(self, x: Tensor) -> Tensor:
        """The integers ``q`` of fake-quantized values ``x`` (exact for values on the grid)."""
        shifted = x if self.offset is None else x - self.along(x, self.offset)
        q = torch.round(shifted / self.along(x, self.scale))
        return q.clamp(self.qmin, self.qmax).to(torch.int64)

    def from_int(self, q: Tensor) -> Tensor:
        """Values ``scale * q (+ offset)`` in fp32."""
        x = q.float() * self.along(q, self.scale)
        return x if self.offset is None else x + self.along(q, self.offset)


class Quantizer(nn.Module):
    """Base class: fake quantization of weights or activations to ``bits`` bits.

    Subclasses implement :meth:`quantize` (fp32 in, fake-quantized fp32 out; or, with
    ``takes_low_precision``, the input's dtype in and out) and, where the
    scheme depends on data, :meth:`initialize` (called once, on the first tensor seen:
    the weights, or the first batch of activations). ``signed=None`` decides from that
    first tensor (any negative value -> signed), since a layer's input is non-negative
    after a ReLU but not after a residual sum without ReLU or at the network's input.

    Args:
        bits: bitwidth; ``32`` = not quantized.
        role: ``"weight"`` or ``"activation"``.
        signed: force a signed/unsigned grid, or ``None`` to detect it (weights: signed).
        channels: output channels of the layer (weights; for per-channel parameters).
    """

    name: ClassVar[str] = "base"
    min_bits: ClassVar[int] = 2
    roles: ClassVar[frozenset[str]] = frozenset({"weight", "activation"})
    zero_exact: ClassVar[frozenset[str]] = frozenset()  # roles where 0 is a level
    # True when quantize() takes bf16 input itself (computing its grid in fp32 inside)
    takes_low_precision: ClassVar[bool] = False

    def __init__(
        self, bits: int, role: Role, signed: bool | None = None, channels: int = 1
    ) -> None:
        super().__init__()
        self.check_bits(bits, role)
        self.bits = int(bits)
        self.role = role
        self.channels = int(channels)
        if role == "weight" and signed is None:
            signed = True
        self._auto_sign = signed is None
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("is_signed", torch.tensor(bool(signed)))

    @classmethod
    def check_bits(cls, bits: int, role: Role) -> None:
        """Raise a UserError if this quantizer cannot quantize ``role`` at ``bits``."""
        if role not in cls.roles:
            raise UserError(f"quantizer {cls.name} does not quantize {role}s")
        if bits != FLOAT_BITS and not cls.min_bits <= bits <= 8:
            raise UserError(
                f"quantizer {cls.name} supports {role} bits {cls.min_bits}..8 "
                f"and {FLOAT_BITS} (float), not {bits}"
            )

    @property
    def enabled(self) -> bool:
        return self.bits != FLOAT_BITS

    @property
    def signed(self) -> bool:
        return bool(self.is_signed)

    def qrange(self) -> tuple[int, int]:
        """``(Qn, Qp)`` for the current bits and sign."""
        return signed_range(self.bits) if self.signed else unsigned_range(self.bits)

    def set_bits(self, bits: int) -> None:
        """Change the bitwidth; data-dependent state is re-initialized on the next call."""
        self.check_bits(bits, self.role)
        self.bits = int(bits)
        self.initialized.fill_(False)

    def initialize(self, x: Tensor) -> None:
        """Set data-dependent parameters from the first tensor seen (default: nothing)."""

    def quantize(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def grid(self) -> UniformGrid | None:
        """The integer grid of a uniform quantizer (None when non-uniform or disabled)."""
        return None

    def codebook(self) -> tuple[Tensor, Tensor] | None:
        """``(centroids, labels)`` of a non-uniform quantizer, values ``centroids[labels]``.

        None for uniform quantizers (see :meth:`grid`) and when disabled.
        """
        return None

    def forward(self, x: Tensor) -> Tensor:
        if not self.enabled:
            return x
        with torch.autocast(x.device.type, enabled=False):
            if not self.takes_low_precision:
                x = x.float()
            if not bool(self.initialized):
                with torch.no_grad():
                    if self._auto_sign:
                        self.is_signed.fill_(bool((x < 0).any()))
                    self.initialize(x.detach().float())
                self.initialized.fill_(True)
            return self.quantize(x)

    def extra_repr(self) -> str:
        sign = "signed" if self.signed else "unsigned"
        return f"bits={self.bits}, role={self.role}, {sign}"

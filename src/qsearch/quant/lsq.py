"""LSQ: learned step size quantization (Esser et al., ICLR 2020).

``q = clamp(round(v / s), -Qn, Qp)``, ``v_hat = q * s``, with the step ``s`` learned. The
gradient w.r.t. ``s`` is (eq. 3 of the paper) ``-v/s + round(v/s)`` inside the range, ``-Qn``
below and ``Qp`` above, scaled by ``g = 1 / sqrt(N * Qp)`` (section 2.2; ``N`` = weights of
the layer, or features per sample for activations). Autograd produces exactly these
gradients from ``round_ste(clamp(v / s)) * s`` with the gradient-scaled ``s``.

Initial step: the paper's ``2 <|v|> / sqrt(Qp)`` (``step_init="lsq"``), or
(``step_init="mse"``, the default for activations in conf/quantizer/lsq.yaml) the multiple
of it that minimizes the quantization MSE of the calibration batch, as LSQ+ (Bhalgat et al.,
2020, sec. 2.3) starts its steps. Post-ReLU activations are sparse, so their mean is small
and the paper's step clips most of their range at 2-3 bits: ResNet-20/CIFAR-10 at W8A3,
calibrated and not yet trained, scores 40.3 % test accuracy with it and 84.0 % with the MSE
step (float 87.1 %; docs/benchmarks.md). Weights keep the paper's step: the MSE one clips
the outliers that matter (W3A8: 75.7 % -> 51.2 %).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from qsearch.quant._clip import subsample
from qsearch.quant.base import Quantizer, Role, UniformGrid, grad_scale
from qsearch.quant.kernels import uniform_fake_quant

STEP_EPS = 1e-8
INITS = ("lsq", "mse")
MSE_FACTORS = torch.linspace(0.2, 3.0, 57)  # candidate steps, in units of the paper's step


class LsqQuantizer(Quantizer):
    """LSQ for weights (signed) and activations (unsigned after ReLU, else signed).

    Args:
        per_channel: one step per output channel (weights only).
        eps: the step is kept >= ``eps``: a projection before every use, because negative or
            zero steps are a known failure of public LSQ implementations.
        step_init: ``"lsq"`` (the paper's initial step) or ``"mse"`` (see the module docstring).
    """

    name = "lsq"
    min_bits = 2
    zero_exact: ClassVar[frozenset[str]] = frozenset({"weight", "activation"})
    takes_low_precision = True

    def __init__(
        self,
        bits: int,
        role: Role,
        signed: bool | None = None,
        channels: int = 1,
        per_channel: bool = False,
        eps: float = STEP_EPS,
        step_init: str = "lsq",
    ) -> None:
        super().__init__(bits, role, signed, channels)
        if step_init not in INITS:
            raise ValueError(f"LSQ step_init must be one of {', '.join(INITS)}, got {step_init!r}")
        self.per_channel = per_channel and role == "weight"
        self.eps = eps
        self.step_init = step_init
        self.step = nn.Parameter(torch.ones(self.channels if self.per_channel else 1))

    @classmethod
    def check_bits(cls, bits: int, role: Role) -> None:
        # unsigned activations work at 1 bit ({0, s}); signed weights need 2 ({-2s..s})
        if role == "activation" and bits == 1:
            return
        super().check_bits(bits, role)

    def _view(self, x: Tensor) -> Tensor:
        """The step, shaped to broadcast over ``x`` (per channel: ``(C, 1, 1, ...)``)."""
        return self.step.view(-1, *([1] * (x.dim() - 1))) if self.per_channel else self.step

    def initialize(self, x: Tensor) -> None:
        """``s = 2 * mean(|v|) / sqrt(Qp)`` (LSQ section 2.1), per channel if enabled; with
        ``step_init="mse"`` then its multiple in ``MSE_FACTORS`` of least quantization MSE."""
        qp = max(self.qrange()[1], 1)  # signed 1-bit activations: Qp = 0, grid {-s, 0}
        mean_abs = x.abs().flatten(1).mean(1) if self.per_channel else x.abs().mean().reshape(1)
        step = (2 * mean_abs / math.sqrt(qp)).clamp_min(self.eps)
        self.step.data.copy_(self._mse_step(x, step) if self.step_init == "mse" else step)

    def _mse_step(self, x: Tensor, step: Tensor) -> Tensor:
        """Per step (channel): the candidate ``f * step`` minimizing ``mean((Q(v) - v)^2)``."""
        qn, qp = self.qrange()
        values = x.flatten(1) if self.per_channel else subsample(x).reshape(1, -1)
        factors = MSE_FACTORS.to(x.device).view(-1, 1, 1)
        candidates = (factors * step.view(1, -1, 1)).clamp_min(self.eps)  # (K, C, 1)
        quantized = torch.round(values / candidates).clamp(-qn, qp) * candidates
        errors = (quantized - values).pow(2).mean(-1)  # (K, C)
        best = errors.argmin(0)
        return candidates[best, torch.arange(len(best), device=x.device), 0]

    def _elements_per_step(self, x: Tensor) -> int:
        if self.role == "activation":
            return x[0].numel()  # features per sample
        return x[0].numel() if self.per_channel else x.numel()

    def quantize(self, x: Tensor) -> Tensor:
        qn, qp = self.qrange()
        if bool((self.step.data < self.eps).any()):
            with torch.no_grad():
                self.step.clamp_(min=self.eps)
        g = 1.0 / math.sqrt(self._elements_per_step(x) * max(qp, 1))
        s = grad_scale(self._view(x), g)
        return uniform_fake_quant(x, s, -qn, qp)

    def grid(self) -> UniformGrid | None:
        if not self.enabled:
            return None
        qn, qp = self.qrange()
        return UniformGrid(scale=self.step.detach().clamp_min(self.eps), qmin=-qn, qmax=qp)

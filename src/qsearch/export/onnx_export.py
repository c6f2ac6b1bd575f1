"""ONNX export of a quantized model as a QDQ graph, checked against onnxruntime.

Per quantized layer, the graph holds float ``Conv``/``Gemm`` ops fed by

* weights: the integers ``q`` as an int8 initializer (uint8 for unsigned grids) and a
  ``DequantizeLinear`` (zero point 0; one scale, or one per output channel on axis 0);
* input activations: ``QuantizeLinear -> Clip -> DequantizeLinear``. ONNX Q/DQ saturate to
  the full int8/uint8 range only, so a grid narrower than 8 bits (``[qmin, qmax]``, e.g.
  ``[0, 15]`` at 4 bits unsigned, ``[-8, 7]`` signed) is a ``Clip`` in the integer domain,
  between the two; an 8-bit grid needs no ``Clip``. A grid offset (LSQ+) becomes a ``Sub``
  before and an ``Add`` after.

A weight grid with an offset that is a multiple of half its step (DoReFa's ``(2i - n) / n``)
becomes integers at half the step. Fallbacks, reported in :class:`OnnxResult`: weights
without such a grid (k-means; 8-bit DoReFa, whose integers ``2i - 255`` overflow int8) are
stored as their fake-quantized fp32 values; 32-bit weights stay float; an activation
quantizer without a per-tensor grid is exported as the float ops of its own forward pass.
onnx and onnxruntime come with the ``onnx`` extra (``pip install 'qsearch[onnx]'``).
"""

from __future__ import annotations

import copy
import importlib.util
import io
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from qsearch.errors import UserError
from qsearch.export.qpack import check_initialized
from qsearch.quant.base import Quantizer, UniformGrid
from qsearch.quant.layers import quant_layers

OPSET = 17
_INT8 = (-128, 127)
_UINT8 = (0, 255)


def _container(qmin: int, qmax: int) -> torch.dtype | None:
    """int8 or uint8, whichever holds ``qmin..qmax`` with zero point 0 (None: neither)."""
    if _INT8[0] <= qmin and qmax <= _INT8[1]:
        return torch.int8
    if _UINT8[0] <= qmin and qmax <= _UINT8[1]:
        return torch.uint8
    return None


def _constant(g: Any, value: float, dtype: torch.dtype) -> Any:
    return g.op("Constant", value_t=torch.tensor(value, dtype=dtype))


class _FakeQuantQdq(torch.autograd.Function):
    """``clamp(round(x / s), qmin, qmax) * s``; exported as Q -> (Clip) -> DQ."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float, qmin: int, qmax: int) -> Tensor:
        return torch.clamp(torch.round(x / scale), qmin, qmax) * scale

    @staticmethod
    def symbolic(g: Any, x: Any, scale: float, qmin: int, qmax: int) -> Any:
        dtype = _container(qmin, qmax)
        s = _constant(g, scale, torch.float32)
        zero = _constant(g, 0, dtype)
        q = g.op("QuantizeLinear", x, s, zero)
        if (qmin, qmax) not in (_INT8, _UINT8):
            q = g.op("Clip", q, _constant(g, qmin, dtype), _constant(g, qmax, dtype))
        return g.op("DequantizeLinear", q, s, zero)


class _Dequantize(torch.autograd.Function):
    """``q * scale`` (per tensor, or per output channel); exported as DequantizeLinear."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, scale: Tensor) -> Tensor:
        return q.float() * (scale.view(-1, *([1] * (q.dim() - 1))) if scale.dim() else scale)

    @staticmethod
    def symbolic(g: Any, q: Any, scale: Any) -> Any:
        return g.op("DequantizeLinear", q, scale, axis_i=0)


class ActivationQdq(nn.Module):
    """An activation quantizer with a per-tensor grid, as ONNX Q/DQ."""

    def __init__(self, grid: UniformGrid) -> None:
        super().__init__()
        self.scale = float(grid.scale.reshape(()))
        self.qmin, self.qmax = grid.qmin, grid.qmax
        self.offset = None if grid.offset is None else float(grid.offset.reshape(()))

    def forward(self, x: Tensor) -> Tensor:
        if self.offset is not None:
            x = x - self.offset
        x = _FakeQuantQdq.apply(x, self.scale, self.qmin, self.qmax)
        return x if self.offset is None else x + self.offset


class WeightDq(nn.Module):
    """Integer weights (int8/uint8 initializer) and their scales; ignores its input."""

    def __init__(self, q: Tensor, scale: Tensor, dtype: torch.dtype) -> None:
        super().__init__()
        self.register_buffer("q", q.to(dtype))
        self.register_buffer("scale", scale.float().reshape(-1 if scale.numel() > 1 else ()))

    def forward(self, _: Tensor) -> Tensor:
        return _Dequantize.apply(self.q, self.scale)


class FloatWeight(nn.Module):
    """Fixed fp32 weights (the fallback); ignores its input."""

    def __init__(self, values: Tensor) -> None:
        super().__init__()
        self.register_buffer("values", values.detach().float().clone())

    def forward(self, _: Tensor) -> Tensor:
        return self.values


@dataclass
class OnnxResult:
    """An exported graph and how each quantized layer was expressed in it."""

    data: bytes
    float_weights: list[str] = field(default_factory=list)  # no integer grid: fp32 weights
    float_activations: list[str] = field(default_factory=list)  # no grid: traced float ops


def _integers(grid: UniformGrid, target: Tensor) -> tuple[Tensor, Tensor] | None:
    """Integers ``q`` and scales with ``target = q * scale`` (zero point 0), or None.

    A grid with an offset qualifies when the offset is a multiple of half its step, as
    DoReFa's levels ``(2i - n) / n`` are: ``q = 2 * i + 2 * offset / step`` at half the step.
    """
    q = grid.to_int(target)
    if grid.offset is None:
        return q, grid.scale
    shift = 2 * grid.offset / grid.scale
    if shift.numel() != 1 or not torch.allclose(shift, shift.round(), rtol=0, atol=1e-4):
        return None
    return 2 * q + int(shift.round()), grid.scale / 2


def _weight_module(quant: Quantizer, weight: Tensor) -> WeightDq | None:
    """The weight as int8/uint8 + DequantizeLinear, or None if it has no integer grid."""
    grid = quant.grid()
    target = quant(weight)
    found = None if grid is None else _integers(grid, target)
    if found is None:
        return None
    q, scale = found
    dtype = _container(int(q.min()), int(q.max()))
    values = q.float() * (scale.view(-1, *([1] * (q.dim() - 1))) if scale.numel() > 1 else scale)
    if dtype is None or not torch.allclose(values, target, rtol=1e-5, atol=0):
        return None  # the grid does not describe this quantizer's output
    return WeightDq(q, scale, dtype)


def qdq_model(model: nn.Module) -> tuple[nn.Module, list[str], list[str]]:
    """A copy of ``model`` whose quantizers are ONNX-exportable Q/DQ modules.

    Returns the copy and the layers whose weights / activations fall back to float.
    """
    export = copy.deepcopy(model).eval()
    float_weights, float_acts = [], []
    with torch.no_grad():
        for name, layer in quant_layers(export):
            wq, aq = layer.weight_quant, layer.act_quant
            weight = _weight_module(wq, layer.weight) if wq.enabled else None
            if weight is None:
                weight = FloatWeight(wq(layer.weight))
                if wq.enabled:
                    float_weights.append(name)
            layer.weight_quant = weight  # type: ignore[assignment]
            grid = aq.grid() if aq.enabled else None
            if grid is not None and grid.scale.numel() == 1 and _container(grid.qmin, grid.qmax):
                layer.act_quant = ActivationQdq(grid)  # type: ignore[assignment]
            elif aq.enabled:
                float_acts.append(name)
    return export, float_weights, float_acts


def export_onnx(model: nn.Module, example: Tensor) -> OnnxResult:
    """Export the quantized ``model`` (fp32, on CPU) as an ONNX QDQ graph.

    ``example`` is an input batch; the batch dimension of the graph is dynamic. Input
    ``images``, output ``logits``, opset :data:`OPSET`.
    """
    if importlib.util.find_spec("onnx") is None:
        raise UserError("ONNX export needs the onnx package: pip install 'qsearch[onnx]'")
    check_initialized(model)
    export, float_weights, float_acts = qdq_model(model)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            export,
            (example,),
            buffer,
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    return OnnxResult(buffer.getvalue(), float_weights, float_acts)


def onnxruntime_available() -> bool:
    """True where onnxruntime is installed (the ``onnx`` extra)."""
    return importlib.util.find_spec("onnxruntime") is not None


def run_onnxruntime(data: bytes, images: Tensor, optimize: bool = False) -> Tensor:
    """The logits onnxruntime (CPU) computes for ``images`` with the graph in ``data``.

    ``optimize=False`` turns onnxruntime's graph optimizations off, so the graph runs as
    written: its fused kernels sum in another order, and a sum that lands within an ulp of
    a rounding boundary moves an activation by one quantization step.
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if not optimize:
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"images": images.float().numpy()})
    return torch.from_numpy(logits)


TOLERANCE = 1e-5  # max |onnxruntime - torch| per logit, relative to max(1, max |logit|)


@dataclass(frozen=True)
class OnnxCheck:
    """onnxruntime's logits vs the fake-quantized PyTorch model's, on one batch.

    With onnxruntime's graph optimizations off (the graph as written): ``max_abs_diff`` and
    ``samples_within``, the fraction of samples whose logits all lie within ``TOLERANCE *
    logit_scale``. With its default optimizations: ``max_abs_diff_optimized`` and
    ``argmax_agreement``. A sample outside the tolerance has an activation that rounded to
    the neighbouring level because a sum fell within float error of a rounding boundary
    (fused kernels add in another order); the larger the model and batch, the likelier.
    """

    max_abs_diff: float
    samples_within: float
    max_abs_diff_optimized: float
    argmax_agreement: float
    logit_scale: float


@torch.no_grad()
def check_onnxruntime(data: bytes, model: nn.Module, images: Tensor) -> OnnxCheck:
    """Compare the graph in ``data`` run by onnxruntime with ``model`` on ``images``."""
    reference = model.eval()(images)
    scale = max(1.0, float(reference.abs().max()))
    plain = (run_onnxruntime(data, images) - reference).abs()
    optimized = run_onnxruntime(data, images, optimize=True)
    return OnnxCheck(
        max_abs_diff=float(plain.max()),
        samples_within=float((plain.amax(1) <= TOLERANCE * scale).float().mean()),
        max_abs_diff_optimized=float((optimized - reference).abs().max()),
        argmax_agreement=float((optimized.argmax(1) == reference.argmax(1)).float().mean()),
        logit_scale=scale,
    )

"""The qpack file: a quantized model with its weights bit-packed at their real bitwidths.

Layout (integers little-endian)::

    b"QPACK" | version: u8 | header length: u32 | header | payload

The header is zlib-compressed compact JSON::

    {"model": {...}, "dataset": {"name": ..., "shape": {...}}, "quantizer": {...},
     "layers": {"<layer>": [w_bits, a_bits, *encoding], ...},   # the policy, forward order
     "shapes": {"<state key>": [...], ...},                    # only where needed
     "crc": <CRC-32 of the payload>}

The payload is the concatenation, without padding, of

1. each quantized layer's weights, in the header's order, by encoding:

   * ``["grid", qmin, n, has_offset]``: ``n`` fp32 scales (1, or one per output channel),
     ``n`` fp32 offsets if ``has_offset``, then ``q - qmin`` packed at ``w_bits`` bits
     (:mod:`qsearch.export.packing`); weights ``= scale * q (+ offset)``;
   * ``["codebook", k, *label_keys]``: ``k <= 2^w_bits`` fp32 centroids, then the labels
     packed at ``w_bits`` bits; weights ``= centroids[labels]``. ``label_keys`` name
     buffers of the layer's weight quantizer that hold these labels (k-means): they are
     filled from the packed labels, not stored again;
   * ``["float"]``: fp32 weights (32-bit layers, and the last resort);

   an encoding ending in ``"direct"`` holds the values the weight quantizer *outputs*, and the
   loader switches that quantizer off (for a quantizer that does not map its own output onto
   itself, e.g. DoReFa's ``tanh`` normalization); otherwise the weights are points of the
   quantizer's grid or codebook, which it maps onto themselves;
2. every other ``state_dict`` entry of the model, in its order, as raw bytes of the dtype
   the rebuilt model has (fp32 for float tensors): biases, batch norm, layers that are not
   quantized, and the quantizers' state (steps, offsets, ranges, signs, centroids).

Shapes and dtypes come from the model the loader rebuilds from the header's configs;
``shapes`` lists the entries whose shape differs from a freshly built model's. The file loads
back to a model whose fp32 logits equal (``torch.equal``) those of the model written.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from qsearch.data import dataset_shape
from qsearch.errors import UserError
from qsearch.export.packing import pack, packed_size, unpack
from qsearch.models import build_model
from qsearch.quant.base import Quantizer, UniformGrid
from qsearch.quant.layers import QuantizerSpec, quant_layers, quantize_model
from qsearch.quant.policy import FLOAT_BITS, LayerBits, Policy

MAGIC = b"QPACK"
VERSION = 1
_PREFIX = struct.Struct("<5sBI")  # magic, version, header length
_FP32 = 4
_DIRECT = "direct"


@dataclass
class QpackSizes:
    """Bytes of each part of a qpack file (``file`` is their sum).

    ``bound`` is ``sum(params * bits) / 8`` over the quantized layers' weights (32 bits for
    float layers); ``float_model`` is the bytes of the float model's tensors (the
    ``state_dict`` without quantizer state), for the compression ratio.
    """

    payload: int = 0  # packed integer weights and codebook labels
    scales: int = 0  # scales, offsets, centroids and quantizer state
    floats: int = 0  # float tensors: biases, batch norm, float layers, fallback weights
    header: int = 0  # prefix and compressed header
    bound: float = 0.0
    float_model: int = 0

    @property
    def file(self) -> int:
        return self.payload + self.scales + self.floats + self.header

    @property
    def ratio(self) -> float:
        """How many times smaller than the float model's tensors the file is."""
        return self.float_model / self.file

    def as_dict(self) -> dict[str, float]:
        fields = ("payload", "scales", "floats", "header", "bound", "float_model")
        return {"file": self.file, **{k: getattr(self, k) for k in fields}, "ratio": self.ratio}


@dataclass(frozen=True)
class LayerRecord:
    """How one quantized layer's weights are stored."""

    name: str
    w_bits: int
    a_bits: int
    encoding: str  # grid | codebook | float
    direct: bool  # holds the quantizer's output; the loaded layer's weight quantizer is off


@dataclass
class EncodedQpack:
    """A qpack file's bytes, with what it holds and how big each part is."""

    data: bytes
    sizes: QpackSizes
    layers: list[LayerRecord] = field(default_factory=list)


@dataclass
class LoadedQpack:
    """A model rebuilt from a qpack file (in eval mode)."""

    model: nn.Module
    policy: Policy
    config: DictConfig  # model, dataset (name and shape) and quantizer configs
    layers: list[LayerRecord]


@dataclass
class _Weights:
    """One layer's encoded weights: its header descriptor, payload parts and decoded value."""

    descriptor: list[Any]
    params: bytes  # fp32 scales/offsets/centroids
    body: bytes  # packed integers/labels, or fp32 weights
    decoded: Tensor
    labels: Tensor | None = None


def _raw(t: Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _from_raw(data: bytes, like: Tensor) -> Tensor:
    if like.numel() == 0:
        return torch.empty_like(like, device="cpu")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(like.dtype).view(like.shape)


def _fp32(data: bytes) -> Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.float32)


def _decode(kind: list[Any], params: bytes, body: bytes, bits: int, like: Tensor) -> _Weights:
    """The weights an encoding stands for, shaped and typed like ``like``."""
    labels = None
    if kind[0] == "grid":
        _, qmin, n, has_offset = kind[:4]
        floats = _fp32(params)
        offset = floats[n : 2 * n] if has_offset else None
        grid = UniformGrid(floats[:n], qmin, qmin + 2**bits - 1, offset)
        values = grid.from_int(unpack(body, bits, like.numel(), qmin).view(like.shape))
    elif kind[0] == "codebook":
        labels = unpack(body, bits, like.numel()).view(like.shape)
        values = _fp32(params)[labels]
    else:
        values = _fp32(body).view(like.shape)
    return _Weights(kind, params, body, values.to(like.dtype), labels)


def _label_keys(quant: Quantizer, labels: Tensor, shape: torch.Size) -> list[str]:
    """The quantizer's integer buffers that hold ``labels`` (shaped like the weights)."""
    return [
        key
        for key, t in quant.state_dict().items()
        if not t.is_floating_point() and t.shape == shape and torch.equal(t, labels.view(shape))
    ]


def _candidates(quant: Quantizer, target: Tensor, bits: int) -> Iterator[_Weights]:
    """Encodings of ``target`` (the quantizer's output), most faithful first."""
    codebook = quant.codebook()
    if codebook is not None and len(codebook[0]) <= 2**bits:
        centroids, labels = codebook
        kind = ["codebook", len(centroids), *_label_keys(quant, labels, target.shape)]
        yield _decode(kind, _raw(centroids.float()), pack(labels, bits), bits, target)
    grid = quant.grid()
    if grid is not None and grid.qmax - grid.qmin < 2**bits:
        params = _raw(grid.scale.float()) + (
            b"" if grid.offset is None else _raw(grid.offset.float())
        )
        kind = ["grid", grid.qmin, grid.scale.numel(), int(grid.offset is not None)]
        yield _decode(kind, params, pack(grid.to_int(target), bits, grid.qmin), bits, target)
    values, labels = torch.unique(target, return_inverse=True)
    if len(values) <= 2**bits:
        yield _decode(["codebook", len(values)], _raw(values), pack(labels, bits), bits, target)


@torch.no_grad()
def _encode_weights(quant: Quantizer, weight: Tensor, bits: int) -> _Weights:
    """The first encoding that reproduces the quantizer's output exactly.

    Preferred: values that the quantizer maps onto its output; then its output itself
    (``direct``); then fp32.
    """
    if not quant.enabled:
        return _decode(["float"], b"", _raw(weight.float()), FLOAT_BITS, weight)
    state = {key: t.clone() for key, t in quant.state_dict().items()}
    target, tried = quant(weight), []
    try:
        for candidate in _candidates(quant, target, bits):
            if torch.equal(quant(candidate.decoded), target):
                return candidate
            tried.append(candidate)
    finally:
        quant.load_state_dict(state)  # a forward pass may update state (DoReFa's 1-bit E|w|)
    for candidate in tried:
        if torch.equal(candidate.decoded, target):
            kind = candidate.descriptor
            candidate.descriptor = [*(kind[:2] if kind[0] == "codebook" else kind), _DIRECT]
            return candidate
    return _decode(["float", _DIRECT], b"", _raw(target.float()), FLOAT_BITS, target)


def check_initialized(model: nn.Module) -> None:
    """Raise a UserError if an enabled quantizer of ``model`` never saw a tensor."""
    for name, module in model.named_modules():
        if isinstance(module, Quantizer) and module.enabled and not bool(module.initialized):
            raise UserError(
                f"quantizer {name} was never initialized: calibrate or fine-tune the model "
                "before exporting it"
            )


def _header_config(config: DictConfig) -> dict[str, Any]:
    """The model, dataset shape and quantizer configs that the loader rebuilds from."""
    info = dataset_shape(config.dataset)
    shape = {"num_classes": info.num_classes, "in_channels": info.in_channels}
    return {
        "model": OmegaConf.to_container(config.model, resolve=True),
        "dataset": {"name": info.name, "shape": {**shape, "image_size": info.image_size}},
        "quantizer": OmegaConf.to_container(config.quantizer, resolve=True),
    }


def _build(header: dict[str, Any]) -> tuple[nn.Module, Policy, DictConfig]:
    """A fresh quantized model (random weights) from a header's configs and layers."""
    config = OmegaConf.create({key: header[key] for key in ("model", "dataset", "quantizer")})
    info = dataset_shape(config.dataset)
    model = build_model(config.model, info)
    layers = {name: LayerBits(int(d[0]), int(d[1])) for name, d in header["layers"].items()}
    policy = Policy(str(config.model.name), info.name, layers)
    quantize_model(model, policy, QuantizerSpec.from_config(config.quantizer))
    return model, policy, config


def _weight_key(key: str, policy: Policy) -> bool:
    return key.removesuffix(".weight") in policy.layers


def _linked_labels(kind: list[Any]) -> list[str]:
    """The weight-quantizer buffers a codebook encoding fills with its labels."""
    return kind[2:] if kind[0] == "codebook" and kind[-1] != _DIRECT else []


@torch.no_grad()
def encode_qpack(model: nn.Module, policy: Policy, config: DictConfig) -> EncodedQpack:
    """Encode a quantized ``model`` (built with ``policy`` and ``config.quantizer``).

    ``config`` holds the ``model``, ``dataset`` and ``quantizer`` configs (those of a
    quantized checkpoint). Raises UserError if a quantizer was never initialized.
    """
    check_initialized(model)
    was_training = model.training
    model.eval()
    try:
        header: dict[str, Any] = {**_header_config(config), "layers": {}, "shapes": {}}
        layers = dict(quant_layers(model))
        sizes, records, chunks, linked = QpackSizes(), [], [], set()
        for name, bits in policy.layers.items():
            layer = layers[name]
            encoded = _encode_weights(layer.weight_quant, layer.weight.detach(), bits.w_bits)
            kind = encoded.descriptor
            header["layers"][name] = [bits.w_bits, bits.a_bits, *kind]
            linked |= {f"{name}.weight_quant.{key}" for key in _linked_labels(kind)}
            chunks += [encoded.params, encoded.body]
            sizes.scales += len(encoded.params)
            if kind[0] == "float":
                sizes.floats += len(encoded.body)
            else:
                sizes.payload += len(encoded.body)
            sizes.bound += layer.weight.numel() * bits.w_bits / 8
            sizes.float_model += layer.weight.numel() * _FP32
            direct = kind[-1] == _DIRECT
            records.append(LayerRecord(name, bits.w_bits, bits.a_bits, kind[0], direct))
        fresh = _build(header)[0].state_dict()
        quantizers = tuple(f"{n}." for n, m in model.named_modules() if isinstance(m, Quantizer))
        for key, tensor in model.state_dict().items():
            if _weight_key(key, policy) or key in linked:
                continue
            if tensor.shape != fresh[key].shape:
                header["shapes"][key] = list(tensor.shape)
            raw = _raw(tensor.to(fresh[key].dtype))
            chunks.append(raw)
            if key.startswith(quantizers):
                sizes.scales += len(raw)
            else:
                sizes.floats += len(raw)
                sizes.float_model += len(raw)
    finally:
        model.train(was_training)
    payload = b"".join(chunks)
    if not header["shapes"]:
        del header["shapes"]
    header["crc"] = zlib.crc32(payload)
    packed_header = zlib.compress(json.dumps(header, separators=(",", ":")).encode(), 9)
    prefix = _PREFIX.pack(MAGIC, VERSION, len(packed_header))
    sizes.header = len(prefix) + len(packed_header)
    return EncodedQpack(prefix + packed_header + payload, sizes, records)


def _read_header(data: bytes, source: str) -> tuple[dict[str, Any], memoryview]:
    if len(data) < _PREFIX.size or data[: len(MAGIC)] != MAGIC:
        raise UserError(f"{source} is not a qpack file")
    _, version, length = _PREFIX.unpack_from(data)
    if version != VERSION:
        raise UserError(f"{source}: qpack version {version} is not supported (this is {VERSION})")
    try:
        header = json.loads(zlib.decompress(data[_PREFIX.size : _PREFIX.size + length]))
        if not {"model", "dataset", "quantizer", "layers", "crc"} <= set(header):
            raise ValueError("incomplete header")
    except (zlib.error, ValueError, TypeError) as exc:
        raise UserError(f"{source}: corrupt qpack header ({exc})") from exc
    payload = memoryview(data)[_PREFIX.size + length :]
    if zlib.crc32(payload) != header["crc"]:
        raise UserError(f"{source}: corrupt qpack payload (checksum mismatch)")
    return header, payload


class _Reader:
    """Reads the payload front to back; a payload of the wrong length is a UserError."""

    def __init__(self, payload: memoryview, source: str) -> None:
        self.payload, self.source, self.cursor = payload, source, 0

    def take(self, size: int) -> bytes:
        if self.cursor + size > len(self.payload):
            raise UserError(f"{self.source}: qpack payload is shorter than its header says")
        self.cursor += size
        return bytes(self.payload[self.cursor - size : self.cursor])

    def finish(self) -> None:
        if self.cursor != len(self.payload):
            raise UserError(f"{self.source}: qpack payload is longer than its header says")


def _read_weights(reader: _Reader, kind: list[Any], w_bits: int, like: Tensor) -> _Weights:
    if kind[0] == "float":
        return _decode(kind, b"", reader.take(like.numel() * _FP32), FLOAT_BITS, like)
    params = reader.take((kind[2] * (1 + kind[3]) if kind[0] == "grid" else kind[1]) * _FP32)
    return _decode(kind, params, reader.take(packed_size(like.numel(), w_bits)), w_bits, like)


def decode_qpack(data: bytes, source: str = "qpack") -> LoadedQpack:
    """Rebuild the model stored in qpack ``data``; a damaged file is a UserError."""
    header, payload = _read_header(data, source)
    reader = _Reader(payload, source)
    try:
        model, policy, config = _build(header)
        state, records, linked = model.state_dict(), [], set()
        for name, (w_bits, a_bits, *kind) in header["layers"].items():
            weights = _read_weights(reader, kind, w_bits, state[f"{name}.weight"])
            state[f"{name}.weight"] = weights.decoded
            for key in _linked_labels(kind):
                state[f"{name}.weight_quant.{key}"] = weights.labels
                linked.add(f"{name}.weight_quant.{key}")
            records.append(LayerRecord(name, w_bits, a_bits, kind[0], kind[-1] == _DIRECT))
        shapes = header.get("shapes", {})
        for key, like in model.state_dict().items():
            if not (_weight_key(key, policy) or key in linked):
                like = torch.empty(shapes.get(key, like.shape), dtype=like.dtype)
                state[key] = _from_raw(reader.take(like.numel() * like.element_size()), like)
        reader.finish()
        model.load_state_dict(state)
    except (AttributeError, KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
        raise UserError(f"{source}: the qpack header does not fit its model ({exc})") from exc
    for record in records:
        if record.direct:
            model.get_submodule(record.name).weight_quant.set_bits(FLOAT_BITS)
    return LoadedQpack(model.eval(), policy, config, records)


def load_qpack(path: str | Path) -> LoadedQpack:
    """Read a qpack file and rebuild its model; a missing or damaged file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"qpack file not found: {path}")
    return decode_qpack(path.read_bytes(), str(path))

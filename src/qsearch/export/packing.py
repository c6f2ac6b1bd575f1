"""Bit packing: integers of ``bits`` bits (1..8) stored back to back, ``ceil(n * bits / 8)`` bytes.

Value ``i`` occupies bits ``[i * bits, (i + 1) * bits)`` of the stream, least significant
bit first (bit ``k`` of the stream is bit ``k % 8`` of byte ``k // 8``). Signed values are
stored with an offset: ``low`` (e.g. ``qmin = -2^(b-1)``) is subtracted before packing and
added back after unpacking, so every stored field is in ``0 .. 2^bits - 1``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

MAX_BITS = 8


def packed_size(count: int, bits: int) -> int:
    """Bytes that :func:`pack` uses for ``count`` values of ``bits`` bits."""
    return (count * bits + 7) // 8


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"can pack 1..{MAX_BITS} bits per value, not {bits}")


def pack(values: Tensor, bits: int, low: int = 0) -> bytes:
    """Pack the integers ``values`` (any shape, flattened) at ``bits`` bits each.

    Every value must lie in ``low .. low + 2^bits - 1``. Returns ``packed_size(n, bits)`` bytes.
    """
    _check_bits(bits)
    fields = values.detach().reshape(-1).to(torch.int64).cpu().numpy() - low
    if fields.size and (fields.min() < 0 or fields.max() >= 1 << bits):
        raise ValueError(f"values outside {low}..{low + (1 << bits) - 1} cannot take {bits} bits")
    shifts = np.arange(bits, dtype=np.uint8)
    stream = (fields.astype(np.uint8)[:, None] >> shifts) & 1  # (n, bits), LSB first
    return np.packbits(stream.reshape(-1), bitorder="little").tobytes()


def unpack(data: bytes, bits: int, count: int, low: int = 0) -> Tensor:
    """The ``count`` integers (int64, flat) that :func:`pack` stored in ``data``."""
    _check_bits(bits)
    if len(data) != packed_size(count, bits):
        raise ValueError(f"{len(data)} bytes cannot hold exactly {count} values of {bits} bits")
    buffer = np.frombuffer(data, dtype=np.uint8)
    stream = np.unpackbits(buffer, count=count * bits, bitorder="little").reshape(count, bits)
    padded = np.zeros((count, 8), dtype=np.uint8)
    padded[:, :bits] = stream
    fields = np.packbits(padded, axis=1, bitorder="little")[:, 0]
    return torch.from_numpy(fields.astype(np.int64) + low)

"""In-memory datasets: uint8 image tensors plus labels, and the deterministic splits."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about its data: shapes, classes and normalization."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class TensorSplit:
    """``images``: uint8 ``(N, C, H, W)``; ``labels``: int64 ``(N,)``."""

    images: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError("labels must be (N,) and match the images")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: Tensor) -> TensorSplit:
        """The samples at ``indices`` (a view-free copy)."""
        return TensorSplit(self.images[indices], self.labels[indices])


@dataclass(frozen=True)
class RawDataset:
    """What a source returns: the official train and test sets."""

    train: TensorSplit
    test: TensorSplit
    num_classes: int


@dataclass(frozen=True)
class DataSplits:
    """Train / validation / test. The search's reward reads ``val``, never ``test``."""

    info: DatasetInfo
    train: TensorSplit
    val: TensorSplit
    test: TensorSplit


def channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, in [0, 1] units."""
    x = images.float().div_(255).transpose(0, 1).reshape(images.shape[1], -1)
    return tuple(x.mean(1).tolist()), tuple(x.std(1).clamp_min(1e-3).tolist())


def split_off(data: TensorSplit, size: int, seed: int) -> tuple[TensorSplit, TensorSplit]:
    """Carve ``size`` random samples off ``data`` with a seeded permutation.

    Returns ``(rest, carved)``. The same seed always carves the same samples.
    """
    if not 0 < size < len(data):
        raise ValueError(f"cannot carve {size} samples out of {len(data)}")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    return data.subset(order[size:].sort().values), data.subset(order[:size].sort().values)


def make_splits(name: str, raw: RawDataset, val_size: float, split_seed: int) -> DataSplits:
    """Carve the validation split off the training set and compute normalization stats.

    ``val_size`` is a sample count, or a fraction of the training set when below 1.
    """
    count = round(val_size * len(raw.train)) if val_size < 1 else int(val_size)
    train, val = split_off(raw.train, count, split_seed)
    mean, std = channel_stats(train.images)
    info = DatasetInfo(
        name=name,
        num_classes=raw.num_classes,
        in_channels=int(train.images.shape[1]),
        image_size=int(train.images.shape[-1]),
        mean=mean,
        std=std,
    )
    return DataSplits(info=info, train=train, val=val, test=raw.test)

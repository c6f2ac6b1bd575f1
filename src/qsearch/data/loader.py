"""Batches straight from in-memory tensors, with augmentation applied per batch.

Small datasets (digits, MNIST, CIFAR-10, SVHN) fit in memory as uint8. Gathering a batch,
augmenting it (random crop with zero padding + horizontal flip, as torchvision's
``RandomCrop(padding=4)`` and ``RandomHorizontalFlip``, optionally Cutout) and normalizing
it are a handful of tensor operations, so on 2 CPU cores the pipeline costs almost nothing
next to the model's step (``scripts/bench_train.py`` measures the ratio).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from qsearch.data.tensors import DatasetInfo, TensorSplit
from qsearch.errors import UserError


@dataclass(frozen=True)
class Augment:
    """Batch augmentation: ``crop_padding`` pixels of random-crop padding, optional flip,
    and a ``cutout`` x ``cutout`` square masked out (0 = off)."""

    crop_padding: int = 0
    hflip: bool = False
    cutout: int = 0

    def __post_init__(self) -> None:
        for name in ("crop_padding", "cutout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UserError(f"dataset.augment.{name} must be an integer >= 0, got {value!r}")

    @classmethod
    def from_config(cls, augment: Mapping[str, Any] | None) -> Augment:
        """The ``dataset.augment`` config node; an unknown key is a UserError."""
        options = dict(augment or {})
        unknown = sorted(set(options) - {f.name for f in fields(cls)})
        if unknown:
            known = ", ".join(f.name for f in fields(cls))
            raise UserError(f"unknown dataset.augment option(s) {unknown} (known: {known})")
        return cls(**options)


def random_crop(images: Tensor, padding: int, generator: torch.Generator) -> Tensor:
    """Zero-pad by ``padding`` and take one random ``H x W`` window per sample."""
    n, c, h, w = images.shape
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    rows = dy[:, None, None] + torch.arange(h)[None, :, None]
    cols = dx[:, None, None] + torch.arange(w)[None, None, :]
    # one gather over the flattened padded image: several times faster than 4-D indexing
    flat = (rows * (w + 2 * padding) + cols).view(n, 1, h * w).expand(n, c, h * w)
    return padded.view(n, c, -1).gather(2, flat).view(n, c, h, w)


def random_hflip(images: Tensor, generator: torch.Generator) -> Tensor:
    """Mirror a random half of the samples left-right."""
    flip = torch.rand(images.shape[0], generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def cutout(images: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """Cutout (DeVries & Taylor, 2017): zero one ``size x size`` square per sample.

    The square's centre is uniform over the image, so near the border only part of it
    falls inside. Applied to normalized images, the masked pixels take the dataset mean.
    """
    n, _, h, w = images.shape
    cy = torch.randint(0, h, (n, 1, 1), generator=generator)
    cx = torch.randint(0, w, (n, 1, 1), generator=generator)
    rows = torch.arange(h).view(1, h, 1) - cy + size // 2
    cols = torch.arange(w).view(1, 1, w) - cx + size // 2
    inside = (rows >= 0) & (rows < size) & (cols >= 0) & (cols < size)
    return images.masked_fill(inside.unsqueeze(1).to(images.device), 0.0)


class TensorLoader:
    """Iterate ``(images, labels)`` batches of a :class:`TensorSplit`.

    Images come out as normalized float32 on ``device``. Shuffling and augmentation are
    seeded by ``(seed, epoch)``, so an epoch is reproducible and a resumed run sees the
    same batches as an uninterrupted one. Call :meth:`set_epoch` before each epoch.
    """

    def __init__(
        self,
        split: TensorSplit,
        info: DatasetInfo,
        batch_size: int,
        *,
        shuffle: bool = False,
        augment: Augment | None = None,
        drop_last: bool = False,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment or Augment()
        self.drop_last = drop_last
        self.seed = seed
        self.device = torch.device(device)
        self.epoch = 0
        mean = torch.tensor(info.mean, device=self.device).view(1, -1, 1, 1)
        std = torch.tensor(info.std, device=self.device).view(1, -1, 1, 1)
        # (x / 255 - mean) / std as one multiply-add
        self._scale, self._shift = 1 / (255 * std), -mean / std

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffling/augmentation stream of ``epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def normalize(self, images: Tensor) -> Tensor:
        """uint8 ``(N, C, H, W)`` -> float32 normalized with the training-set statistics."""
        x = images.to(self.device, non_blocking=True).float()
        return torch.addcmul(self._shift, x, self._scale)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        n = len(self.split)
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        for batch in range(len(self)):
            idx = order[batch * self.batch_size : (batch + 1) * self.batch_size]
            images = self.split.images[idx]
            if self.augment.crop_padding:
                images = random_crop(images, self.augment.crop_padding, generator)
            if self.augment.hflip:
                images = random_hflip(images, generator)
            batch_images = self.normalize(images)
            if self.augment.cutout:
                batch_images = cutout(batch_images, self.augment.cutout, generator)
            yield batch_images, self.split.labels[idx].to(self.device)

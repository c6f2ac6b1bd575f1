"""Dataset sources: each returns the official train/test sets as uint8 tensors.

Nothing here downloads unless ``download=True`` is asked for: the default is to read
prepared files under ``root`` (``make data`` / ``python -m qsearch.data.prepare``) and to
fail with one line naming the path looked at and the command that prepares it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import Tensor

from qsearch.data.tensors import RawDataset, TensorSplit
from qsearch.errors import UserError
from qsearch.utils.io import load_torch, save_torch

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


def _missing(name: str, looked_at: Path, prepare: str | None = None) -> UserError:
    how = (
        f"run `make data` (python -m qsearch.data.prepare {prepare})"
        if prepare
        else ("put the files there")
    )
    return UserError(
        f"{name} not found at {looked_at}: {how}, or add "
        "dataset.source.download=true to download it"
    )


def _hwc_to_split(images: np.ndarray | Tensor, labels: object) -> TensorSplit:
    """(N, H, W[, C]) uint8 array -> TensorSplit with (N, C, H, W) images."""
    x = torch.as_tensor(np.asarray(images), dtype=torch.uint8)
    x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    return TensorSplit(x.contiguous(), y)


def digits(test_size: int = 360, split_seed: int = 0) -> RawDataset:
    """scikit-learn's 8x8 handwritten digits (1,797 samples), embedded: no files needed.

    The pixel values 0..16 are scaled to 0..255; ``test_size`` samples (seeded) are held out
    as the test set, since the dataset has no official split.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    full = _hwc_to_split(images, bunch.target)
    order = torch.randperm(len(full), generator=torch.Generator().manual_seed(split_seed))
    test_idx, train_idx = order[:test_size].sort().values, order[test_size:].sort().values
    return RawDataset(full.subset(train_idx), full.subset(test_idx), num_classes=10)


def _torchvision_mnist_like(
    cls: Callable[..., torchvision.datasets.MNIST], name: str, root: str, download: bool
) -> RawDataset:
    root_path = Path(root)
    try:
        train = cls(str(root_path), train=True, download=download)
        test = cls(str(root_path), train=False, download=download)
    except RuntimeError as exc:
        if download:
            raise UserError(f"cannot download {name} into {root_path}: {exc}") from exc
        raise _missing(name, root_path / cls.__name__ / "raw", name.lower()) from exc
    return RawDataset(
        _hwc_to_split(train.data.numpy(), train.targets),
        _hwc_to_split(test.data.numpy(), test.targets),
        num_classes=10,
    )


def mnist(root: str = "data", download: bool = False) -> RawDataset:
    """MNIST (60,000 train / 10,000 test, 28x28 grey) via torchvision's reader."""
    return _torchvision_mnist_like(torchvision.datasets.MNIST, "mnist", root, download)


def fashion_mnist(root: str = "data", download: bool = False) -> RawDataset:
    """Fashion-MNIST (60,000 / 10,000, 28x28 grey) via torchvision's reader."""
    return _torchvision_mnist_like(
        torchvision.datasets.FashionMNIST, "fashion_mnist", root, download
    )


def cifar10(
    root: str = "data", download: bool = False, cache_dir: str = ".cache/qsearch"
) -> RawDataset:
    """CIFAR-10: torchvision's python batches, or the JPEG ``train/``/``test/`` folder copy.

    Looks for ``<root>/cifar-10-batches-py`` first, then ``<root>/cifar10-jpeg/{train,test}``
    (the layout of the offline copy; decoded once and cached as tensors in ``cache_dir``).
    """
    root_path = Path(root)
    jpeg_root = root_path / "cifar10-jpeg"
    if not (root_path / "cifar-10-batches-py").is_dir() and (jpeg_root / "train").is_dir():
        return imagefolder(str(jpeg_root), image_size=32, cache_dir=cache_dir)
    try:
        train = torchvision.datasets.CIFAR10(str(root_path), train=True, download=download)
        test = torchvision.datasets.CIFAR10(str(root_path), train=False, download=download)
    except RuntimeError as exc:
        if download:
            raise UserError(f"cannot download cifar10 into {root_path}: {exc}") from exc
        raise _missing("cifar10", jpeg_root, "cifar10") from exc
    return RawDataset(
        _hwc_to_split(train.data, train.targets), _hwc_to_split(test.data, test.targets), 10
    )


def svhn(root: str = "data", download: bool = False) -> RawDataset:
    """SVHN cropped digits (73,257 train / 26,032 test, 32x32 RGB) via torchvision."""
    root_path = Path(root) / "svhn"
    try:
        train = torchvision.datasets.SVHN(str(root_path), split="train", download=download)
        test = torchvision.datasets.SVHN(str(root_path), split="test", download=download)
    except RuntimeError as exc:
        if download:
            raise UserError(f"cannot download svhn into {root_path}: {exc}") from exc
        raise _missing("svhn", root_path) from exc
    return RawDataset(_chw_to_split(train), _chw_to_split(test), num_classes=10)


def _chw_to_split(dataset: torchvision.datasets.SVHN) -> TensorSplit:
    return TensorSplit(
        torch.as_tensor(dataset.data, dtype=torch.uint8),
        torch.as_tensor(dataset.labels, dtype=torch.int64),
    )


def _decode_folder(folder: Path, classes: list[str], image_size: int) -> TensorSplit:
    """Decode every image of an ImageFolder tree into one uint8 tensor, resized if needed."""
    images: list[Tensor] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        if not (folder / cls).is_dir():
            continue
        files = sorted(p for p in (folder / cls).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for path in files:
            image = torchvision.io.decode_image(
                torchvision.io.read_file(str(path)), mode=torchvision.io.ImageReadMode.RGB
            )
            if image.shape[-2:] != (image_size, image_size):
                image = torchvision.transforms.functional.resize(
                    image, [image_size, image_size], antialias=True
                )
            images.append(image)
            labels.append(label)
    if not images:
        raise UserError(f"no images found under {folder}")
    return TensorSplit(torch.stack(images), torch.tensor(labels, dtype=torch.int64))


def imagefolder(
    root: str, image_size: int = 32, test_dir: str = "test", cache_dir: str = ".cache/qsearch"
) -> RawDataset:
    """A user's images in torchvision's ImageFolder layout: ``<root>/{train,<test_dir>}/<class>/``.

    Images are decoded once, resized to ``image_size`` square, held in memory as uint8 and
    cached as a tensor file in ``cache_dir`` (keyed by the folder's path and file listing),
    so this suits datasets that fit in memory.
    """
    root_path = Path(root)
    train_dir, eval_dir = root_path / "train", root_path / test_dir
    for folder in (train_dir, eval_dir):
        if not folder.is_dir():
            raise UserError(
                f"imagefolder: {folder} not found (expected <root>/train/<class>/ "
                f"and <root>/{test_dir}/<class>/)"
            )
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    listing = "\n".join(sorted(str(p.relative_to(root_path)) for p in root_path.rglob("*")))
    key = hashlib.sha256(f"{root_path.resolve()}|{image_size}|{listing}".encode()).hexdigest()
    cache = Path(cache_dir) / "datasets" / f"imagefolder-{key[:16]}.pt"
    if cache.is_file():
        blob = load_torch(cache)
        return RawDataset(
            TensorSplit(blob["train_images"], blob["train_labels"]),
            TensorSplit(blob["test_images"], blob["test_labels"]),
            num_classes=len(classes),
        )
    train = _decode_folder(train_dir, classes, image_size)
    test = _decode_folder(eval_dir, classes, image_size)
    save_torch(
        cache,
        {
            "train_images": train.images,
            "train_labels": train.labels,
            "test_images": test.images,
            "test_labels": test.labels,
        },
    )
    return RawDataset(train, test, num_classes=len(classes))

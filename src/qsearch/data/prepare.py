"""Prepare datasets under a data root, from local copies where they exist.

``python -m qsearch.data.prepare [mnist fashion_mnist cifar10 ...] [--root data]``

Sources, in order: the folder named by ``$QSEARCH_DATA_SOURCE`` (layout: ``mnist/*.gz``,
``cifar10-jpeg.tar.gz``, optionally ``fashion-mnist/*.gz``), Debian's
``/usr/share/datasets/fashion-mnist`` for Fashion-MNIST, and finally torchvision's download.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import torchvision

from qsearch.errors import USER_ERROR_EXIT_CODE, UserError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _gunzip_idx(source: Path, raw_dir: Path) -> bool:
    """Unpack the four gzip'ed IDX files of ``source`` into ``raw_dir``; False if absent."""
    if not all((source / f"{name}.gz").is_file() for name in IDX_FILES):
        return False
    raw_dir.mkdir(parents=True, exist_ok=True)
    for name in IDX_FILES:
        target = raw_dir / name
        if target.is_file():
            continue
        tmp = target.with_suffix(".tmp")
        with gzip.open(source / f"{name}.gz", "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        tmp.replace(target)
    return True


def _source_dir() -> Path | None:
    value = os.environ.get("QSEARCH_DATA_SOURCE")
    return Path(value) if value else None


def _prepare_idx(root: Path, folders: list[Path], raw: str, dataset: type) -> str:
    """Unpack the gzipped IDX files of the first of ``folders`` that has them into
    ``root/<raw>/raw``, or let torchvision's ``dataset`` class download them."""
    for folder in folders:
        if _gunzip_idx(folder, root / raw / "raw"):
            return f"unpacked from {folder}"
    for train in (True, False):
        dataset(str(root), train=train, download=True)
    return "downloaded by torchvision"


def prepare_mnist(root: Path) -> str:
    source = _source_dir()
    folders = [source / "mnist"] if source else []
    return _prepare_idx(root, folders, "MNIST", torchvision.datasets.MNIST)


def prepare_fashion_mnist(root: Path) -> str:
    source = _source_dir()
    folders = ([source / "fashion-mnist"] if source else []) + [DEBIAN_FASHION_MNIST]
    return _prepare_idx(root, folders, "FashionMNIST", torchvision.datasets.FashionMNIST)


def prepare_cifar10(root: Path) -> str:
    source = _source_dir()
    archive = source / "cifar10-jpeg.tar.gz" if source else None
    target = root / "cifar10-jpeg"
    if (target / "train").is_dir() and (target / "test").is_dir():
        return f"already at {target}"
    if archive and archive.is_file():
        staging = root / ".cifar10-jpeg.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        with tarfile.open(archive) as tar:
            tar.extractall(staging, filter="data")
        if not (staging / "train").is_dir():
            raise UserError(f"{archive} holds no top-level train/ folder")
        staging.replace(target)
        return f"unpacked from {archive}"
    torchvision.datasets.CIFAR10(str(root), train=True, download=True)
    torchvision.datasets.CIFAR10(str(root), train=False, download=True)
    return "downloaded by torchvision"


def prepare_svhn(root: Path) -> str:
    for split in ("train", "test"):
        torchvision.datasets.SVHN(str(root / "svhn"), split=split, download=True)
    return "downloaded by torchvision"


PREPARERS: dict[str, Callable[[Path], str]] = {
    "mnist": prepare_mnist,
    "fashion_mnist": prepare_fashion_mnist,
    "cifar10": prepare_cifar10,
    "svhn": prepare_svhn,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m qsearch.data.prepare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "datasets",
        nargs="*",
        default=["mnist", "fashion_mnist", "cifar10"],
        help=f"any of {', '.join(PREPARERS)} (default: all but svhn)",
    )
    parser.add_argument("--root", default=os.environ.get("QSEARCH_DATA_DIR", "data"))
    args = parser.parse_args(argv)
    root = Path(args.root)
    for name in args.datasets:
        if name not in PREPARERS:
            print(
                f"prepare: error: unknown dataset '{name}' (choose from: {', '.join(PREPARERS)})",
                file=sys.stderr,
            )
            return USER_ERROR_EXIT_CODE
    failures = 0
    for name in args.datasets:
        try:
            print(f"{name}: {PREPARERS[name](root)} -> {root}")
        except UserError as exc:
            failures += 1
            print(f"prepare: error: {exc}", file=sys.stderr)
        except (RuntimeError, OSError) as exc:  # torchvision's download without a network
            failures += 1
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            print(
                f"prepare: error: {name}: no local copy (set QSEARCH_DATA_SOURCE) and the "
                f"download failed: {first}",
                file=sys.stderr,
            )
    return USER_ERROR_EXIT_CODE if failures else 0


if __name__ == "__main__":
    sys.exit(main())

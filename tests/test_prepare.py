"""``make data``: unpacking local copies, and the error when nothing can be had."""

from __future__ import annotations

import gzip
import tarfile
from pathlib import Path

import pytest

from qsearch.data import prepare


def _fake_idx_source(folder: Path) -> None:
    folder.mkdir(parents=True)
    for name in prepare.IDX_FILES:
        with gzip.open(folder / f"{name}.gz", "wb") as handle:
            handle.write(name.encode())


def test_mnist_unpacked_from_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_idx_source(tmp_path / "src" / "mnist")
    monkeypatch.setenv("QSEARCH_DATA_SOURCE", str(tmp_path / "src"))
    assert prepare.main(["mnist", "--root", str(tmp_path / "data")]) == 0
    raw = tmp_path / "data" / "MNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(prepare.IDX_FILES)
    assert (raw / "t10k-labels-idx1-ubyte").read_bytes() == b"t10k-labels-idx1-ubyte"


def test_cifar10_unpacked_from_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = tmp_path / "tree"
    for split in ("train", "test"):
        (tree / split / "cat").mkdir(parents=True)
        (tree / split / "cat" / "0001.jpg").write_bytes(b"jpeg")
    (tmp_path / "src").mkdir()
    with tarfile.open(tmp_path / "src" / "cifar10-jpeg.tar.gz", "w:gz") as tar:
        for split in ("train", "test"):
            tar.add(tree / split, arcname=split)
    monkeypatch.setenv("QSEARCH_DATA_SOURCE", str(tmp_path / "src"))
    assert prepare.main(["cifar10", "--root", str(tmp_path / "data")]) == 0
    assert (tmp_path / "data" / "cifar10-jpeg" / "test" / "cat" / "0001.jpg").is_file()
    assert not (tmp_path / "data" / ".cifar10-jpeg.partial").exists()


def test_no_source_and_no_network_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("QSEARCH_DATA_SOURCE", raising=False)
    monkeypatch.setattr(prepare, "DEBIAN_FASHION_MNIST", tmp_path / "absent")

    def offline(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nmirror down")

    monkeypatch.setattr(prepare.torchvision.datasets, "FashionMNIST", offline)
    assert prepare.main(["fashion_mnist", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "set QSEARCH_DATA_SOURCE" in err


def test_unknown_dataset(capsys: pytest.CaptureFixture[str]) -> None:
    assert prepare.main(["imagenet"]) == 2
    assert "unknown dataset 'imagenet'" in capsys.readouterr().err

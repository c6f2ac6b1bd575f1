"""Datasets, splits and the in-memory loader."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qsearch.data import Augment, TensorLoader, TensorSplit, build_data
from qsearch.data.loader import cutout, random_crop, random_hflip
from qsearch.data.sources import imagefolder
from qsearch.data.tensors import DatasetInfo, RawDataset, channel_stats, make_splits, split_off
from qsearch.errors import UserError
from tests.conftest import DATA_ROOT, compose, requires_dataset

INFO = DatasetInfo("toy", 2, 1, 4, (0.0,), (1.0,))


def _toy_split(n: int = 10, size: int = 4) -> TensorSplit:
    images = torch.arange(n * size * size, dtype=torch.int64).remainder(256).to(torch.uint8)
    return TensorSplit(images.view(n, 1, size, size), torch.arange(n) % 2)


def test_digits_splits_are_disjoint_and_deterministic() -> None:
    cfg = compose("train", "dataset=digits")
    data = build_data(cfg.dataset)
    assert (len(data.train), len(data.val), len(data.test)) == (1293, 144, 360)
    assert data.info.num_classes == 10 and data.info.image_size == 8
    assert data.train.images.dtype == torch.uint8
    again = build_data(cfg.dataset)
    assert torch.equal(again.val.images, data.val.images)
    # digits has a few duplicate images; overlap must stay at the level of those duplicates
    assert len(_rows(data.val) & _rows(data.test)) <= 2
    assert len(_rows(data.train) & _rows(data.val)) <= 2


def _rows(split: TensorSplit) -> set[tuple[int, ...]]:
    return {tuple(x.flatten().tolist()) for x in split.images}


def test_split_seed_changes_validation_samples() -> None:
    split = _toy_split(100)
    _, val_a = split_off(split, 10, seed=0)
    _, val_b = split_off(split, 10, seed=1)
    rest, val_a2 = split_off(split, 10, seed=0)
    assert torch.equal(val_a.images, val_a2.images)
    assert not torch.equal(val_a.images, val_b.images)
    assert len(rest) == 90
    all_rows = torch.cat([rest.images, val_a.images]).view(100, -1)[:, 0].sort().values
    assert torch.equal(all_rows, split.images.view(100, -1)[:, 0].sort().values)


def test_fractional_val_size() -> None:
    raw = RawDataset(_toy_split(40), _toy_split(4), num_classes=2)
    assert len(make_splits("toy", raw, val_size=0.25, split_seed=0).val) == 10
    assert len(make_splits("toy", raw, val_size=3, split_seed=0).val) == 3


def test_channel_stats_hand_computed() -> None:
    images = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1)
    mean, std = channel_stats(images)
    assert mean == pytest.approx((0.5,))
    assert std == pytest.approx((2**0.5 / 2,))


def test_loader_covers_each_sample_once_per_epoch() -> None:
    split = _toy_split(10)
    loader = TensorLoader(split, INFO, batch_size=3, shuffle=True, seed=5)
    firsts = torch.cat([x[:, 0, 0, 0] for x, _ in loader])
    assert len(loader) == 4 and firsts.numel() == 10
    expected = sorted(split.images[:, 0, 0, 0].float().div(255).tolist())
    assert sorted(firsts.tolist()) == pytest.approx(expected, abs=1e-6)


def test_loader_epochs_are_reproducible_and_differ() -> None:
    split = _toy_split(32)
    loader = TensorLoader(split, INFO, 8, shuffle=True, augment=Augment(1, True), seed=1)
    loader.set_epoch(3)
    first = [x for x, _ in loader]
    loader.set_epoch(4)
    other = [x for x, _ in loader]
    loader.set_epoch(3)
    again = [x for x, _ in loader]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_loader_normalizes_with_dataset_stats() -> None:
    split = TensorSplit(torch.full((2, 1, 2, 2), 255, dtype=torch.uint8), torch.zeros(2).long())
    info = DatasetInfo("toy", 2, 1, 2, (0.5,), (0.25,))
    images, labels = next(iter(TensorLoader(split, info, batch_size=2)))
    assert torch.allclose(images, torch.full_like(images, 2.0))  # (1 - 0.5) / 0.25
    assert images.dtype == torch.float32 and labels.tolist() == [0, 0]


@settings(max_examples=25, deadline=None)
@given(padding=st.integers(1, 4), seed=st.integers(0, 10_000))
def test_random_crop_is_a_window_of_the_padded_image(padding: int, seed: int) -> None:
    images = torch.randint(1, 255, (4, 2, 6, 6), dtype=torch.uint8)
    crops = random_crop(images, padding, torch.Generator().manual_seed(seed))
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    assert crops.shape == images.shape
    for crop, pad in zip(crops, padded, strict=True):
        windows = pad.unfold(1, 6, 1).unfold(2, 6, 1)  # (C, oy, ox, 6, 6)
        assert (windows == crop[:, None, None]).flatten(3).all(3).all(0).any()


def test_hflip_mirrors_about_half() -> None:
    images = torch.arange(2000 * 3, dtype=torch.uint8).view(2000, 1, 1, 3)
    flipped = random_hflip(images, torch.Generator().manual_seed(0))
    mirrored = (flipped == images.flip(-1)).flatten(1).all(1)
    kept = (flipped == images).flatten(1).all(1)
    assert bool((mirrored | kept).all())
    assert 900 < int(mirrored.sum()) < 1100


@settings(max_examples=25, deadline=None)
@given(size=st.integers(1, 10), seed=st.integers(0, 10_000))
def test_cutout_masks_one_clipped_square_per_image(size: int, seed: int) -> None:
    images = torch.ones(16, 3, 8, 8)
    masked = cutout(images, size, torch.Generator().manual_seed(seed))
    zero = masked == 0
    assert torch.equal(zero, zero[:, :1].expand_as(zero))  # the same square in every channel
    assert bool((masked[~zero] == 1).all())
    for square in zero[:, 0]:
        rows, cols = square.any(1).nonzero().flatten(), square.any(0).nonzero().flatten()
        # a full rectangle of contiguous rows x cols: the size x size square, clipped
        assert int(square.sum()) == len(rows) * len(cols)
        for kept in (rows, cols):
            assert len(kept) == int(kept[-1] - kept[0]) + 1
            assert min(8, size - size // 2) <= len(kept) <= min(8, size)


def test_cutout_square_lies_fully_inside_at_the_expected_rate() -> None:
    # size 4 on 8x8 covers rows cy-2..cy+1: whole when cy and cx are both in 2..6, p = (5/8)^2
    masked = cutout(torch.ones(4000, 1, 8, 8), 4, torch.Generator().manual_seed(0))
    whole = (masked == 0).flatten(1).sum(1) == 16
    assert 0.37 < whole.float().mean().item() < 0.41


def test_loader_cutout_sets_pixels_to_the_dataset_mean() -> None:
    split = TensorSplit(torch.full((64, 1, 4, 4), 255, dtype=torch.uint8), torch.zeros(64).long())
    info = DatasetInfo("toy", 2, 1, 4, (0.5,), (0.25,))
    loader = TensorLoader(split, info, 64, shuffle=True, augment=Augment(cutout=2), seed=0)
    images, _ = next(iter(loader))
    masked = images == 0  # normalized 0 is the mean; the rest is (1 - 0.5) / 0.25
    assert torch.allclose(images[~masked], torch.tensor(2.0))
    assert bool(masked.flatten(1).any(1).all())  # the centre always lies inside


def test_bad_augment_options_are_user_errors() -> None:
    with pytest.raises(UserError, match=r"dataset.augment.cutout must be an integer >= 0, got -1"):
        Augment(cutout=-1)
    with pytest.raises(UserError, match=r"crop_padding must be an integer >= 0, got 'four'"):
        Augment.from_config({"crop_padding": "four"})
    with pytest.raises(UserError, match=r"unknown dataset.augment option\(s\) \['cutot'\]"):
        Augment.from_config({"cutot": 8})
    assert Augment.from_config(None) == Augment()
    assert Augment.from_config({"cutout": 8, "hflip": True}) == Augment(0, True, 8)


def test_missing_dataset_names_path_and_command(tmp_path: Path) -> None:
    cfg = compose("train", "dataset=mnist", f"data_root={tmp_path}")
    with pytest.raises(UserError, match=r"not found at .*MNIST/raw: run `make data`"):
        build_data(cfg.dataset)


def test_download_failure_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision

    def offline(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried 4 mirrors")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    cfg = compose("train", "dataset=mnist", f"data_root={tmp_path}", "dataset.source.download=true")
    with pytest.raises(UserError, match="cannot download mnist") as info:
        build_data(cfg.dataset)
    assert "\n" not in str(info.value)


def _write_images(folder: Path, classes: dict[str, int], size: int = 10) -> None:
    import torchvision

    for index, (name, count) in enumerate(classes.items()):
        (folder / name).mkdir(parents=True)
        for i in range(count):
            image = torch.full((3, size, size), 40 * index + i, dtype=torch.uint8)
            torchvision.io.write_png(image, str(folder / name / f"{i}.png"))


def test_imagefolder_decodes_resizes_and_caches(tmp_path: Path) -> None:
    _write_images(tmp_path / "imgs" / "train", {"cat": 3, "dog": 2})
    _write_images(tmp_path / "imgs" / "test", {"cat": 1, "dog": 1})
    raw = imagefolder(str(tmp_path / "imgs"), image_size=8, cache_dir=str(tmp_path / "c"))
    assert raw.train.images.shape == (5, 3, 8, 8) and raw.num_classes == 2
    assert raw.train.labels.tolist() == [0, 0, 0, 1, 1]
    assert raw.train.images[4, 0, 0, 0] == 41  # dog, second image
    assert len(list((tmp_path / "c" / "datasets").glob("*.pt"))) == 1
    cached = imagefolder(str(tmp_path / "imgs"), image_size=8, cache_dir=str(tmp_path / "c"))
    assert torch.equal(cached.test.images, raw.test.images)


@requires_dataset("MNIST/raw/train-images-idx3-ubyte")
def test_mnist_loader() -> None:
    cfg = compose("train", "dataset=mnist", f"data_root={DATA_ROOT}")
    data = build_data(cfg.dataset)
    assert (len(data.train), len(data.val), len(data.test)) == (55_000, 5_000, 10_000)
    assert data.info.image_size == 28 and data.info.in_channels == 1
    assert data.info.mean[0] == pytest.approx(0.1307, abs=2e-3)
    assert torch.bincount(data.test.labels).tolist()[0] == 980  # published class count


@requires_dataset("cifar10-jpeg/train")
def test_cifar10_jpeg_copy_loads(tmp_path: Path) -> None:
    cfg = compose("train", "dataset=cifar10", f"data_root={DATA_ROOT}", f"cache_dir={tmp_path}")
    data = build_data(cfg.dataset)
    assert (len(data.train), len(data.val), len(data.test)) == (45_000, 5_000, 10_000)
    assert data.train.images.shape[1:] == (3, 32, 32)
    assert torch.bincount(data.test.labels).tolist() == [1000] * 10

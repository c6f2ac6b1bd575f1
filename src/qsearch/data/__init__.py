"""Datasets as in-memory tensors with deterministic train/val/test splits."""

from __future__ import annotations

from omegaconf import DictConfig

from qsearch.config import instantiate_checked
from qsearch.data.loader import Augment, TensorLoader
from qsearch.data.tensors import DatasetInfo, DataSplits, TensorSplit, make_splits

__all__ = [
    "Augment",
    "DataSplits",
    "DatasetInfo",
    "TensorLoader",
    "TensorSplit",
    "build_data",
    "dataset_shape",
    "eval_loader",
    "train_loader",
]


def build_data(dataset_cfg: DictConfig) -> DataSplits:
    """Load ``dataset_cfg.source`` and carve a seeded validation split off its train set."""
    raw = instantiate_checked(dataset_cfg.source)
    return make_splits(
        dataset_cfg.name, raw, float(dataset_cfg.val_size), int(dataset_cfg.split_seed)
    )


def dataset_shape(dataset_cfg: DictConfig) -> DatasetInfo:
    """Shapes and classes of a dataset, from its config's ``shape`` when complete.

    Enough to build a model and its layer inventory without reading any data (the
    normalization statistics are placeholders); falls back to loading the data.
    """
    shape = dataset_cfg.get("shape") or {}
    keys = ("num_classes", "in_channels", "image_size")
    if all(shape.get(key) is not None for key in keys):
        channels = int(shape.in_channels)
        return DatasetInfo(
            name=dataset_cfg.name,
            num_classes=int(shape.num_classes),
            in_channels=channels,
            image_size=int(shape.image_size),
            mean=(0.0,) * channels,
            std=(1.0,) * channels,
        )
    return build_data(dataset_cfg).info


def train_loader(
    data: DataSplits, dataset_cfg: DictConfig, batch_size: int, seed: int, device: str = "cpu"
) -> TensorLoader:
    """Shuffled, augmented (as the dataset config says) batches of the train split."""
    augment = Augment.from_config(dataset_cfg.get("augment"))
    return TensorLoader(
        data.train,
        data.info,
        batch_size,
        shuffle=True,
        augment=augment,
        drop_last=len(data.train) > batch_size,
        seed=seed,
        device=device,
    )


def eval_loader(
    data: DataSplits, split: str, batch_size: int = 512, device: str = "cpu"
) -> TensorLoader:
    """Ordered, unaugmented batches of ``split`` (``"val"`` or ``"test"``)."""
    return TensorLoader(getattr(data, split), data.info, batch_size, device=device)

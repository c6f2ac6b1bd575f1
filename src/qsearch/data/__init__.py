"""Datasets as in-memory tensors with deterministic train/val/test splits."""

from __future__ import annotations

from qsearch.config import instantiate_checked
from omegaconf import DictConfig

from qsearch.data.loader import Augment, TensorLoader
from qsearch.data.tensors import DataSplits, DatasetInfo, TensorSplit, make_splits

__all__ = ["Augment", "DataSplits", "DatasetInfo", "TensorLoader", "TensorSplit",
           "build_data", "train_loader", "eval_loader"]


def build_data(dataset_cfg: DictConfig) -> DataSplits:
    """Load ``dataset_cfg.source`` and carve a seeded validation split off its train set."""
    raw = instantiate_checked(dataset_cfg.source)
    return make_splits(dataset_cfg.name, raw, float(dataset_cfg.val_size),
                       int(dataset_cfg.split_seed))


def train_loader(data: DataSplits, dataset_cfg: DictConfig, batch_size: int, seed: int,
                 device: str = "cpu") -> TensorLoader:
    """Shuffled, augmented (as the dataset config says) batches of the train split."""
    augment = Augment(**dataset_cfg.get("augment", {}))
    return TensorLoader(data.train, data.info, batch_size, shuffle=True, augment=augment,
                        drop_last=len(data.train) > batch_size, seed=seed, device=device)


def eval_loader(data: DataSplits, split: str, batch_size: int = 512,
                device: str = "cpu") -> TensorLoader:
    """Ordered, unaugmented batches of ``split`` (``"val"`` or ``"test"``)."""
    return TensorLoader(getattr(data, split), data.info, batch_size, device=device)

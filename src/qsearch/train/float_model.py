"""Float (full-precision) training with an on-disk checkpoint cache.

A float checkpoint is identified by the model, the dataset split, the seed and the
training recipe. ``qsearch train`` fills the cache; ``search`` and ``finetune`` read it and
train on demand when it is missing. Training checkpoints every epoch into the cache entry,
so a crashed run resumes where it stopped, and a lock keeps parallel runs of the same
entry (Hydra multirun) from training it twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from qsearch import __version__
from qsearch.checkpoint import FLOAT_FORMAT, write_checkpoint
from qsearch.config import freeze_config
from qsearch.data import DataSplits
from qsearch.errors import UserError
from qsearch.models import build_model
from qsearch.train.fit import Monitor, ResumeFile, TrainContext, fit, validation_row
from qsearch.train.loop import (
    TrainStep,
    build_optimizer,
    cosine_schedule,
    cross_entropy_loss,
    evaluate,
)
from qsearch.train.recipe import FloatRecipe
from qsearch.train.runtime import Runtime
from qsearch.utils.io import load_torch, load_weights, reading_checkpoint, write_json

log = logging.getLogger(__name__)

_SOURCE_KEYS_NOT_IN_IDENTITY = ("root", "download", "cache_dir")
# augmentation options added after the first cached checkpoints: left out of the identity
# while off, so that the checkpoints trained before them keep their keys
_AUGMENT_KEYS_IN_IDENTITY_ONLY_WHEN_ON = ("cutout",)


@dataclass(frozen=True)
class FloatCheckpoint:
    """A trained float model on disk and its metadata (accuracies in percent)."""

    path: Path
    meta: dict[str, Any]

    @property
    def directory(self) -> Path:
        return self.path.parent

    @property
    def history(self) -> list[dict[str, float]]:
        """Per-epoch rows of the training run, as saved beside it in ``metrics.json``."""
        return json.loads((self.directory / "metrics.json").read_text()).get("history", [])


def float_seed(cfg: DictConfig) -> int:
    """The float model's seed: ``float_seed`` (which defaults to the run's ``seed``)."""
    return int(cfg.get("float_seed", cfg.seed))


def float_identity(cfg: DictConfig, runtime: Runtime) -> dict[str, Any]:
    """Everything that determines the float weights: model, data split, seed, recipe."""
    source = OmegaConf.to_container(cfg.dataset.source, resolve=True)
    assert isinstance(source, dict)
    for key in _SOURCE_KEYS_NOT_IN_IDENTITY:
        source.pop(key, None)
    augment = OmegaConf.to_container(cfg.dataset.get("augment", {}), resolve=True)
    assert isinstance(augment, dict)
    for key in _AUGMENT_KEYS_IN_IDENTITY_ONLY_WHEN_ON:
        if not augment.get(key):
            augment.pop(key, None)
    return {
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "dataset": {
            "name": cfg.dataset.name,
            "source": source,
            "val_size": cfg.dataset.val_size,
            "split_seed": cfg.dataset.split_seed,
            "augment": augment,
        },
        "seed": float_seed(cfg),
        "recipe": OmegaConf.to_container(cfg.train, resolve=True),
        "bf16": runtime.bf16,
    }


def float_key(identity: dict[str, Any]) -> str:
    """A short stable hash of :func:`float_identity`."""
    blob = json.dumps(identity, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def float_cache_dir(cfg: DictConfig, runtime: Runtime) -> Path:
    """``<cache_dir>/float/<model>-<dataset>-s<seed>-<key>/``."""
    key = float_key(float_identity(cfg, runtime))
    name = f"{cfg.model.name}-{cfg.dataset.name}-s{float_seed(cfg)}-{key}"
    return Path(cfg.cache_dir) / "float" / name


@contextmanager
def _exclusive(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_float_checkpoint(path: Path) -> FloatCheckpoint:
    """Validate a float checkpoint file and return it with its metadata."""
    blob = load_torch(path)
    if not isinstance(blob, dict) or blob.get("format") != FLOAT_FORMAT:
        raise UserError(f"{path} is not a qsearch float checkpoint")
    return FloatCheckpoint(path=path, meta=blob["meta"])


def load_float_weights(model: nn.Module, checkpoint: FloatCheckpoint) -> nn.Module:
    """Load the checkpoint's state dict into ``model``; a mismatch is a UserError."""
    blob = load_torch(checkpoint.path)
    with reading_checkpoint(checkpoint.path, "float"):
        state_dict = blob["state_dict"]
    return load_weights(model, state_dict, checkpoint.path)


def train_float(
    cfg: DictConfig,
    data: DataSplits,
    runtime: Runtime,
    *,
    force: bool = False,
    monitor: Monitor | None = None,
) -> FloatCheckpoint:
    """Return the cached float checkpoint for ``cfg``, training (or resuming) it if needed."""
    directory = float_cache_dir(cfg, runtime)
    final = directory / "model.pt"
    with _exclusive(directory):
        if final.is_file() and not force:
            log.info("float checkpoint found in cache: %s", final)
            return read_float_checkpoint(final)
        if force:
            (directory / "last.pt").unlink(missing_ok=True)
        return _fit(cfg, data, runtime, directory, monitor)


def _fit(
    cfg: DictConfig,
    data: DataSplits,
    runtime: Runtime,
    directory: Path,
    monitor: Monitor | None,
) -> FloatCheckpoint:
    """SGD with a cosine schedule from a seeded initialization; saves the checkpoint."""
    recipe, seed = FloatRecipe.from_config(cfg.train), float_seed(cfg)
    identity = float_identity(cfg, runtime)
    key = float_key(identity)
    torch.manual_seed(seed)
    model = runtime.prepare(build_model(cfg.model, data.info))
    context = TrainContext(data, runtime, cfg.dataset, seed, directory)
    loader = context.train_loader(int(recipe.batch_size))
    val = context.eval_loader("val")
    optimizer = build_optimizer(model, recipe)
    epochs = int(recipe.epochs)
    scheduler = cosine_schedule(
        optimizer, epochs * len(loader), int(recipe.warmup_epochs) * len(loader)
    )
    step = TrainStep(
        model, optimizer, scheduler, runtime, cross_entropy_loss(recipe.label_smoothing)
    )
    resume = ResumeFile(directory / "last.pt", {"key": key})
    title = f"{cfg.model.name}/{cfg.dataset.name}"
    history = fit(
        step,
        loader,
        epochs,
        validation_row(model, val, runtime),
        title=title,
        resume=resume,
        monitor=monitor,
    )
    test = evaluate(model, context.eval_loader("test"), runtime)
    meta = {
        "model": cfg.model.name,
        "dataset": cfg.dataset.name,
        "seed": seed,
        "key": key,
        "identity": json.dumps(identity, sort_keys=True, default=str),
        "val_acc": history[-1]["val_acc"] if history else float("nan"),
        "test_acc": test.accuracy,
        "epochs": epochs,
        "train_seconds": sum(row["seconds"] for row in history),
        "qsearch_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    checkpoint = _save_float(directory, model, cfg, meta, history)
    resume.path.unlink(missing_ok=True)
    return checkpoint


def _save_float(
    directory: Path,
    model: nn.Module,
    cfg: DictConfig,
    meta: dict[str, Any],
    history: list[dict[str, float]],
) -> FloatCheckpoint:
    """Write ``model.pt`` (weights, metadata, model/dataset configs) and ``metrics.json``."""
    final = directory / "model.pt"
    config = freeze_config(cfg, ("model", "dataset"))
    write_checkpoint(final, FLOAT_FORMAT, model, config, meta)
    write_json(directory / "metrics.json", {**meta, "history": history})
    return FloatCheckpoint(path=final, meta=meta)

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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from qsearch import __version__
from qsearch.config import freeze_config
from qsearch.data import DataSplits, eval_loader, train_loader
from qsearch.errors import UserError
from qsearch.models import build_model
from qsearch.report.progress import training_progress
from qsearch.train.loop import (
    build_optimizer,
    cosine_schedule,
    cross_entropy_loss,
    evaluate,
    restore_epoch_state,
    save_epoch_state,
    train_one_epoch,
)
from qsearch.train.runtime import Runtime
from qsearch.utils.io import (
    load_torch,
    load_weights,
    reading_checkpoint,
    save_torch,
    write_json,
)

log = logging.getLogger(__name__)

FLOAT_FORMAT = "qsearch-float/1"
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


EpochCallback = Callable[[int, dict[str, float]], None]


def train_float(
    cfg: DictConfig,
    data: DataSplits,
    runtime: Runtime,
    *,
    force: bool = False,
    on_epoch_end: EpochCallback | None = None,
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
        return _fit(cfg, data, runtime, directory, on_epoch_end)


def _fit(
    cfg: DictConfig,
    data: DataSplits,
    runtime: Runtime,
    directory: Path,
    on_epoch_end: EpochCallback | None,
) -> FloatCheckpoint:
    recipe, seed = cfg.train, float_seed(cfg)
    identity = float_identity(cfg, runtime)
    key = float_key(identity)
    torch.manual_seed(seed)
    model = runtime.prepare(build_model(cfg.model, data.info))
    loader = train_loader(data, cfg.dataset, int(recipe.batch_size), seed, str(runtime.device))
    val = eval_loader(data, "val", device=str(runtime.device))
    optimizer = build_optimizer(model, recipe)
    epochs = int(recipe.epochs)
    scheduler = cosine_schedule(
        optimizer, epochs * len(loader), int(recipe.warmup_epochs) * len(loader)
    )
    loss_fn = cross_entropy_loss(float(recipe.label_smoothing))
    history: list[dict[str, float]] = []
    start_epoch, resume = 0, directory / "last.pt"
    if resume.is_file():
        state = load_torch(resume)
        if state.get("key") == key:
            start_epoch, history = restore_epoch_state(state, model, optimizer, scheduler)
            log.info("resuming float training at epoch %d/%d", start_epoch + 1, epochs)

    with training_progress() as progress:
        epochs_task = progress.add_task(
            f"{cfg.model.name}/{cfg.dataset.name}", total=epochs, completed=start_epoch
        )
        for epoch in range(start_epoch, epochs):
            loader.set_epoch(epoch)
            stats = train_one_epoch(
                model,
                loader,
                optimizer,
                scheduler,
                runtime,
                loss_fn=loss_fn,
                progress=progress,
                description=f"epoch {epoch + 1}",
            )
            val_stats = evaluate(model, val, runtime)
            row = {
                "epoch": epoch + 1,
                "lr": optimizer.param_groups[0]["lr"],
                "train_loss": stats.loss,
                "train_acc": stats.accuracy,
                "val_loss": val_stats.loss,
                "val_acc": val_stats.accuracy,
                "seconds": stats.seconds + val_stats.seconds,
            }
            history.append(row)
            log.info(
                "epoch %d/%d  loss %.4f  train %.2f%%  val %.2f%%  (%.1fs)",
                epoch + 1,
                epochs,
                stats.loss,
                stats.accuracy,
                val_stats.accuracy,
                row["seconds"],
            )
            save_epoch_state(resume, model, optimizer, scheduler, epoch + 1, history, key=key)
            progress.update(epochs_task, advance=1, loss=stats.loss, acc=val_stats.accuracy)
            if on_epoch_end is not None:
                on_epoch_end(epoch, row)

    test = evaluate(model, eval_loader(data, "test", device=str(runtime.device)), runtime)
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
    state_dict = {k: v.contiguous().cpu() for k, v in model.state_dict().items()}
    final = directory / "model.pt"
    save_torch(
        final,
        {
            "format": FLOAT_FORMAT,
            "meta": meta,
            "state_dict": state_dict,
            "config": freeze_config(cfg, ("model", "dataset")),
        },
    )
    write_json(directory / "metrics.json", {**meta, "history": history})
    resume.unlink(missing_ok=True)
    return FloatCheckpoint(path=final, meta=meta)

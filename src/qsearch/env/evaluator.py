"""Policy -> validation accuracy, by short retraining, cached on disk.

The reward of every search step comes from here (ReLeQ: "after each action, short
retraining"; HAQ: a short fine-tune of the constrained policy). Accuracy is measured on
the validation split, never the test split. Results are cached in an append-only JSONL
file keyed by everything that determines them (the float weights' content, model, dataset,
quantizer, retraining recipe, seed, device, precision, compiled kernels and the evaluator's
own version), so no configuration is retrained twice: not within a search, not across
episodes, not across resumed or repeated runs; and a retrained float model or another
device never reuses a stale accuracy.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from qsearch.data import DataSplits, TensorLoader, eval_loader
from qsearch.data.loader import Augment
from qsearch.data.tensors import split_off
from qsearch.quant.bn import reestimate_bn
from qsearch.quant.kernels import compile_enabled
from qsearch.quant.layers import QuantizerSpec, calibrate, quantize_model
from qsearch.quant.policy import Policy
from qsearch.train.distill import distillation_loss
from qsearch.train.loop import (
    LossFn,
    TrainingDiverged,
    TrainStep,
    build_optimizer,
    cosine_schedule,
    cross_entropy_loss,
    evaluate,
    train_one_epoch,
)
from qsearch.train.runtime import Runtime

log = logging.getLogger(__name__)

EVALUATOR_VERSION = 3  # raise when a change to this module changes the accuracies it returns


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of a model's state dict (names, dtypes, shapes and bytes), in sorted order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{flat.dtype}:{tuple(flat.shape)}".encode())
        digest.update(flat.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class RetrainConfig:
    """Short retraining inside the search (``conf/evaluator/retrain.yaml`` holds the
    defaults). ``steps=0`` evaluates without retraining.

    SGD (``lr``, ``momentum``, ``nesterov``, ``weight_decay``: the float recipe's by
    default) with a cosine schedule over ``steps`` batches of ``batch_size``.
    ``train_subset``/``val_subset``: sample counts (None = the whole split).
    ``bn_batches``: after retraining, re-estimate batch-norm statistics on this many train
    batches (:func:`qsearch.quant.bn.reestimate_bn`; 0 = off).
    ``distill_alpha``: weight of the distillation term from the float model in the
    retraining loss (Hinton et al., 2015; 0 = plain cross entropy), at
    ``distill_temperature``.
    """

    steps: int
    lr: float
    batch_size: int
    momentum: float
    nesterov: bool
    weight_decay: float
    train_subset: int | None
    val_subset: int | None
    bn_batches: int
    distill_alpha: float
    distill_temperature: float

    @classmethod
    def from_config(cls, evaluator: DictConfig, **changes: Any) -> RetrainConfig:
        """The retraining of an ``evaluator=retrain`` config, with ``changes`` applied."""
        values = {f.name: evaluator[f.name] for f in fields(cls)} | changes
        return cls(
            steps=int(values["steps"]),
            lr=float(values["lr"]),
            batch_size=int(values["batch_size"]),
            momentum=float(values["momentum"]),
            nesterov=bool(values["nesterov"]),
            weight_decay=float(values["weight_decay"]),
            train_subset=_optional_int(values["train_subset"]),
            val_subset=_optional_int(values["val_subset"]),
            bn_batches=int(values["bn_batches"]),
            distill_alpha=float(values["distill_alpha"]),
            distill_temperature=float(values["distill_temperature"]),
        )


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


class EvalCache:
    """Append-only JSONL of ``{"key": policy key, "accuracy": %, "seconds": s}`` lines.

    Appends are single short writes with ``O_APPEND``, so parallel searches can share a file
    and a crash loses at most the line being written (a torn last line is skipped).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, dict[str, float]] = {}
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                    self.entries[entry["key"]] = entry
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue

    def get(self, key: str) -> dict[str, float] | None:
        return self.entries.get(key)

    def put(self, key: str, accuracy: float, seconds: float, diverged: bool = False) -> None:
        entry: dict[str, Any] = {"key": key, "accuracy": accuracy, "seconds": seconds}
        if diverged:
            entry["diverged"] = True
        self.entries[key] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(entry) + "\n").encode())
        finally:
            os.close(fd)


@dataclass(frozen=True)
class EvalResult:
    """Validation accuracy (%) of a policy, the seconds it took, whether it was cached,
    whether its retraining diverged (then ``accuracy`` is chance), and the number of
    validation samples it was measured on (0: not a sample estimate)."""

    accuracy: float
    seconds: float
    cached: bool
    diverged: bool = False
    samples: int = 0

    @property
    def standard_error(self) -> float | None:
        """The binomial standard error of ``accuracy`` (percentage points), or None."""
        return standard_error(self.accuracy, self.samples)


def standard_error(accuracy: float, samples: int) -> float | None:
    """``100 sqrt(p (1 - p) / n)`` for an accuracy of ``p`` measured on ``n`` samples."""
    if samples <= 0:
        return None
    p = min(max(accuracy / 100.0, 0.0), 1.0)
    return 100.0 * math.sqrt(p * (1.0 - p) / samples)


class PolicyEvaluator:
    """Accuracy of a policy after short retraining from the float weights.

    Deterministic for a seed: the same policy always gets the same accuracy (on the same
    machine and precision), which is what makes caching sound.
    """

    def __init__(
        self,
        float_model: nn.Module,
        data: DataSplits,
        runtime: Runtime,
        spec: QuantizerSpec,
        retrain: RetrainConfig,
        *,
        seed: int,
        augment: Augment | None = None,
        cache_dir: Path | None = None,
        context: dict[str, Any] | None = None,
    ) -> None:
        self.float_model = float_model.cpu().eval()
        self.data, self.runtime, self.spec, self.retrain = data, runtime, spec, retrain
        self.seed = seed
        device = str(runtime.device)
        train = data.train
        if retrain.train_subset is not None and retrain.train_subset < len(train):
            _, train = split_off(train, retrain.train_subset, seed)
        self.train_loader = TensorLoader(
            train,
            data.info,
            retrain.batch_size,
            shuffle=True,
            augment=augment,
            drop_last=len(train) > retrain.batch_size,
            seed=seed,
            device=device,
        )
        val = data.val
        if retrain.val_subset is not None and retrain.val_subset < len(val):
            _, val = split_off(val, retrain.val_subset, seed)
        self.val_loader = TensorLoader(val, data.info, 512, device=device)
        self.val_samples = len(val)
        self.calibration = next(iter(eval_loader(data, "train", batch_size=256, device=device)))[0]
        context = {
            **(context or {}),
            "retrain": asdict(retrain),
            "seed": seed,
            "quantizer": spec.identity(),
            "float_weights": weights_digest(self.float_model),
            "device": device,
            "bf16": runtime.bf16,
            "channels_last": runtime.channels_last,
            "compile": compile_enabled(),
            "evaluator_version": EVALUATOR_VERSION,
        }
        self.context_key = hashlib.sha256(
            json.dumps(context, sort_keys=True, default=str).encode()
        ).hexdigest()[:16]
        self.cache = EvalCache(cache_dir / f"{self.context_key}.jsonl") if cache_dir else None
        self.hits = self.misses = 0
        self.seconds = 0.0
        self._teacher: nn.Module | None = None

    def float_accuracy(self) -> float:
        """Validation accuracy (%) of the float model on the evaluator's validation set."""
        model = self.runtime.prepare(copy.deepcopy(self.float_model))
        return evaluate(model, self.val_loader, self.runtime).accuracy

    def __call__(self, policy: Policy) -> EvalResult:
        key = policy.key()
        if self.cache is not None and (entry := self.cache.get(key)) is not None:
            self.hits += 1
            accuracy, seconds = float(entry["accuracy"]), float(entry["seconds"])
            diverged = bool(entry.get("diverged"))
            return EvalResult(accuracy, seconds, True, diverged, self.val_samples)
        start = time.perf_counter()
        try:
            accuracy, diverged = self._retrain_and_evaluate(policy), False
        except TrainingDiverged as exc:
            accuracy, diverged = 100.0 / self.data.info.num_classes, True
            log.warning("%s: retraining diverged (%s); scored at chance", key, exc)
        seconds = time.perf_counter() - start
        self.misses += 1
        self.seconds += seconds
        if self.cache is not None:
            self.cache.put(key, accuracy, seconds, diverged)
        return EvalResult(accuracy, seconds, False, diverged, self.val_samples)

    def _retrain_and_evaluate(self, policy: Policy) -> float:
        """Accuracy (%) after the short retraining.

        Raises:
            TrainingDiverged: the retraining loss became non-finite.
        """
        torch.manual_seed(self.seed)
        model = quantize_model(copy.deepcopy(self.float_model), policy, self.spec)
        model = self.runtime.prepare(model)
        calibrate(model, self.calibration)
        steps = self.retrain.steps
        if steps > 0:
            optimizer = build_optimizer(model, self.retrain)
            scheduler = cosine_schedule(optimizer, steps)
            loss_fn = self._loss()
            epoch, done = 0, 0
            while done < steps:
                self.train_loader.set_epoch(epoch)
                batch_steps = min(steps - done, len(self.train_loader))
                train_one_epoch(
                    TrainStep(model, optimizer, scheduler, self.runtime, loss_fn),
                    self.train_loader,
                    max_steps=batch_steps,
                )
                done += batch_steps
                epoch += 1
        if self.retrain.bn_batches > 0:
            self.train_loader.set_epoch(0)
            batches = (images for images, _ in self.train_loader)
            reestimate_bn(model, islice(batches, self.retrain.bn_batches))
        return evaluate(model, self.val_loader, self.runtime).accuracy

    def _loss(self) -> LossFn:
        """Cross entropy, or with ``distill_alpha`` the distillation loss from the float
        model (the teacher, prepared once on the runtime's device)."""
        if self.retrain.distill_alpha <= 0:
            return cross_entropy_loss()
        if self._teacher is None:
            self._teacher = self.runtime.prepare(copy.deepcopy(self.float_model)).eval()
        return distillation_loss(
            self._teacher, self.retrain.distill_alpha, self.retrain.distill_temperature
        )

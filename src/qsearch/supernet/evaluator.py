"""``evaluator=supernet``: a policy's validation accuracy read off the trained supernet.

No retraining: every layer is switched to the policy's bits, batch-norm statistics are
re-estimated on a few training batches (always the same ones, augmented as in training: the
weights were trained under those statistics; un-augmented batches cost ResNet-20/CIFAR-10's
1-epoch supernet 5.7 points at W3A3, 78.4 instead of 84.1 %), and the validation split (or a
seeded subset of it) is evaluated. Results are cached on disk like the retraining
evaluator's, keyed by the supernet file's content and the scoring settings.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from torch import nn

from qsearch.data import Augment, DataSplits, TensorLoader
from qsearch.data.tensors import split_off
from qsearch.env.evaluator import EvalCache, EvalResult
from qsearch.env.space import SearchSpace
from qsearch.quant.policy import Policy
from qsearch.setup import Setup
from qsearch.supernet.model import score_policy, space_choices
from qsearch.supernet.store import find_supernet, load_supernet
from qsearch.train.loop import evaluate
from qsearch.train.runtime import Runtime

EVALUATOR_VERSION = 2  # raise when a change here changes the accuracies it returns


@dataclass(frozen=True)
class Scoring:
    """How a policy is scored: BN statistics re-estimated on ``bn_batches`` training
    batches (with the training ``augment``), then the validation split (or ``val_subset``
    samples of it, drawn by ``seed``)."""

    bn_batches: int
    val_subset: int | None
    seed: int
    augment: Augment | None = None


class SupernetEvaluator:
    """Accuracy (%) of a policy on a trained supernet (see the module docstring), cached in
    ``cache``."""

    def __init__(
        self,
        supernet: nn.Module,
        float_model: nn.Module,
        data: DataSplits,
        runtime: Runtime,
        scoring: Scoring,
        cache: EvalCache | None,
    ) -> None:
        self.model, self.float_model, self.runtime = supernet, float_model, runtime
        self.bn_batches, self.cache = scoring.bn_batches, cache
        device, val = str(runtime.device), data.val
        if scoring.val_subset is not None and scoring.val_subset < len(val):
            _, val = split_off(val, scoring.val_subset, scoring.seed)
        self.val_loader = TensorLoader(val, data.info, 512, device=device)
        self.val_samples = len(val)
        self.bn_loader = TensorLoader(
            data.train,
            data.info,
            256,
            shuffle=True,
            augment=scoring.augment,
            seed=scoring.seed,
            device=device,
        )
        self.hits = self.misses = 0
        self.seconds = 0.0

    def float_accuracy(self) -> float:
        """Validation accuracy (%) of the float model on the same validation set."""
        return evaluate(
            self.runtime.prepare(self.float_model), self.val_loader, self.runtime
        ).accuracy

    def __call__(self, policy: Policy) -> EvalResult:
        key = policy.key()
        if self.cache is not None and (entry := self.cache.get(key)) is not None:
            self.hits += 1
            accuracy, seconds = float(entry["accuracy"]), float(entry["seconds"])
            return EvalResult(accuracy, seconds, cached=True, samples=self.val_samples)
        start = time.perf_counter()
        accuracy = score_policy(
            self.model, policy, self.bn_loader, self.bn_batches, self.val_loader, self.runtime
        )
        seconds = time.perf_counter() - start
        self.misses += 1
        self.seconds += seconds
        if self.cache is not None:
            self.cache.put(key, accuracy, seconds)
        return EvalResult(accuracy, seconds, cached=False, samples=self.val_samples)


def train_command() -> str:
    """``qsearch supernet`` with this run's overrides: the command that trains the supernet
    a search with these overrides needs."""
    overrides = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    unused = ("evaluator=", "hydra.", "resume=", "agent", "reward", "budget.")  # by training
    kept = [o for o in overrides if not o.startswith(unused)]
    return " ".join(["qsearch supernet", *kept])


def locate_supernet(setup: Setup, space: SearchSpace) -> Path:
    """The cached supernet a search of ``space`` scores with (checked before any training).

    Raises:
        UserError: no supernet is cached for this model, float model, quantizer and bits.
    """
    return find_supernet(setup.cfg, setup.runtime, space_choices(space), train_command())


def supernet_evaluator(setup: Setup, path: Path) -> SupernetEvaluator:
    """The evaluator of ``setup.cfg`` (``evaluator=supernet``) on the supernet at ``path``
    (:func:`locate_supernet`); load the float checkpoint into ``setup.float_model`` first."""
    cfg = setup.cfg
    supernet = setup.runtime.prepare(load_supernet(path, setup.float_model, setup.spec))
    augment = Augment.from_config(cfg.dataset.get("augment"))
    scoring = Scoring(
        int(cfg.evaluator.bn_batches), cfg.evaluator.val_subset, int(cfg.seed), augment
    )
    identity = {
        "supernet": hashlib.sha256(path.read_bytes()).hexdigest(),
        "scoring": asdict(scoring),
        "device": str(setup.runtime.device),
        "bf16": setup.runtime.bf16,
        "version": EVALUATOR_VERSION,
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    cache = EvalCache(Path(cfg.cache_dir) / "evals" / f"supernet-{key}.jsonl")
    return SupernetEvaluator(supernet, setup.float_model, setup.data, setup.runtime, scoring, cache)

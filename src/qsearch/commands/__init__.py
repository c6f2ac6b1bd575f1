"""The commands of the ``qsearch`` CLI: one module each, each with a ``run(cfg)`` function.

A command's primary config is ``conf/<command>.yaml``. Adding a command means one module
here, one YAML file and one line in :data:`COMMANDS`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from omegaconf import DictConfig


@dataclass(frozen=True)
class Command:
    """A CLI command: the module holding its ``run(cfg)`` and its one-line summary."""

    module: str
    summary: str

    def load(self) -> Callable[[DictConfig], object]:
        """Import the command's module lazily (keeps ``qsearch --help`` fast)."""
        return importlib.import_module(self.module).run


COMMANDS: dict[str, Command] = {
    "search": Command(
        "qsearch.commands.search", "search per-layer bitwidths (releq, haq, random, bayes, ...)"
    ),
    "supernet": Command(
        "qsearch.commands.supernet", "train the weight-shared multi-bit supernet of a search space"
    ),
    "train": Command(
        "qsearch.commands.train", "train a float model (cached by model, dataset, seed, recipe)"
    ),
    "finetune": Command(
        "qsearch.commands.finetune", "fine-tune a policy with LSQ + periodic regularizer (+KD)"
    ),
    "evaluate": Command(
        "qsearch.commands.evaluate", "accuracy, average bits and size of a float or quantized model"
    ),
    "export": Command("qsearch.commands.export", "quantized checkpoint -> bit-packed qpack / ONNX"),
    "dynamic": Command(
        "qsearch.commands.dynamic", "instance-aware dynamic bits: controller + Gumbel-Softmax"
    ),
    "cost": Command("qsearch.commands.cost", "a policy's latency, energy, size, BitOPs per preset"),
    "report": Command(
        "qsearch.commands.report", "one table + Pareto figure over a sweep's runs (mean ± std)"
    ),
}

"""Helpers the commands share: the Hydra run dir, the one (global) rich console, and the
float checkpoint of a :class:`~qsearch.setup.Setup` behind a progress display."""

from __future__ import annotations

from pathlib import Path

import rich
from hydra.core.hydra_config import HydraConfig

from qsearch.report.progress import training_progress
from qsearch.setup import Setup
from qsearch.train.fit import Monitor
from qsearch.train.float_model import FloatCheckpoint

console = rich.get_console()


def run_dir() -> Path:
    """The Hydra output directory of the current job (``outputs/<command>/...``)."""
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path.cwd()


def load_trained_float(setup: Setup, force: bool = False) -> FloatCheckpoint:
    """``setup``'s float checkpoint (trained first when the cache lacks it, with a progress
    display), its weights loaded into ``setup.float_model``."""
    with training_progress() as progress:
        return setup.float_checkpoint(Monitor(progress), force=force)

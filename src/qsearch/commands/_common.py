"""Helpers every command uses: the Hydra run dir and the one (global) rich console."""

from __future__ import annotations

from pathlib import Path

import rich
from hydra.core.hydra_config import HydraConfig

console = rich.get_console()


def run_dir() -> Path:
    """The Hydra output directory of the current job (``outputs/<command>/...``)."""
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path.cwd()

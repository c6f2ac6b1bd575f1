"""Shared fixtures: composing the real configs, and the prepared datasets when present."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import DictConfig

from qsearch.config import job_config
from qsearch.errors import UserError

REPO = Path(__file__).resolve().parent.parent
DATA_ROOT = Path(os.environ.get("QSEARCH_DATA_DIR", REPO / "data"))


# Config groups placed under another key (`recipe@train: float`).
GROUP_PACKAGE = {"recipe": "train", "finetune_recipe": "finetune"}


def compose(command: str, *overrides: str) -> DictConfig:
    """The config a ``qsearch <command> <overrides>`` run would get (hydra node removed)."""
    return job_config(command, list(overrides))


def compose_filled(command: str, *overrides: str) -> DictConfig:
    """Like :func:`compose`, with placeholder values for keys that must be set (``???``)."""
    filled: list[str] = []
    while True:
        try:
            return compose(command, *overrides, *filled)
        except UserError as exc:
            missing = re.match(r"(\S+) must be set", str(exc))
            if missing is None or len(filled) > 5:
                raise
            filled.append(f"{missing.group(1)}=placeholder")


@pytest.fixture
def tmp_cache(tmp_path: Path) -> str:
    """A fresh cache dir, as a ``cache_dir=`` override."""
    return f"cache_dir={tmp_path / 'cache'}"


def requires_dataset(relative: str) -> pytest.MarkDecorator:
    """Skip unless ``data/<relative>`` was prepared by ``make data``."""
    return pytest.mark.skipif(
        not (DATA_ROOT / relative).exists(),
        reason=f"{DATA_ROOT / relative} not prepared (run `make data`)",
    )


def run_qsearch(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``qsearch <args>`` in a subprocess from ``cwd``, with its own cache under ``cwd``."""
    env = {**os.environ, "QSEARCH_CACHE_DIR": str(cwd / "cache")}
    return subprocess.run(
        [sys.executable, "-m", "qsearch.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )

"""Atomic file writes and safe loading of untrusted files."""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from qsearch.errors import UserError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    Readers never see a half-written file, and a crash leaves the previous version intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    tmp_path.chmod(0o666 & ~_umask())
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_atomic(path: str | Path, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` and move the result onto ``path`` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_torch(path: str | Path, obj: Any) -> Path:
    """``torch.save`` ``obj`` to ``path`` atomically."""
    return write_atomic(path, lambda tmp: torch.save(obj, tmp))


def load_torch(path: str | Path) -> Any:
    """Load a checkpoint with ``weights_only=True``; a missing or corrupt file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):
        raise UserError(f"cannot read checkpoint {path}: not a PyTorch file, or damaged")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(
            f"cannot read checkpoint {path}: it holds objects other than tensors "
            "and plain data, which qsearch does not unpickle"
        ) from exc
    except Exception as exc:  # torch raises many types for a damaged file
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise UserError(
            f"cannot read checkpoint {path}: damaged ({type(exc).__name__}"
            f"{': ' + reason if reason else ''})"
        ) from exc


@contextmanager
def reading_checkpoint(source: str | Path, kind: str) -> Iterator[None]:
    """Turn a missing entry or a wrong type inside a loaded ``kind`` checkpoint (read from
    ``source``) into a UserError: the file was written by something else, or damaged."""
    try:
        yield
    except (KeyError, TypeError, AttributeError, yaml.YAMLError) as exc:
        raise UserError(f"{source}: malformed {kind} checkpoint ({type(exc).__name__})") from exc


def load_weights(model: nn.Module, state_dict: Mapping[str, Any], source: str | Path) -> nn.Module:
    """``model.load_state_dict(state_dict)``; weights of other names or shapes are a
    UserError naming ``source`` and the first mismatch."""
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"{source}: weights do not fit the model: {first}") from exc
    return model


def newest_match(root: Path, pattern: str) -> Path | None:
    """The most recently modified path under ``root`` matching the glob ``pattern``."""
    return max(root.glob(pattern), key=lambda path: path.stat().st_mtime, default=None)

"""Atomic writes and safe checkpoint loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qsearch.errors import UserError
from qsearch.utils.io import load_torch, save_torch, write_atomic, write_json


def test_failed_write_keeps_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    write_json(target, {"a": 1})

    def broken(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        write_atomic(target, broken)
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_round_trip_and_permissions(tmp_path: Path) -> None:
    path = save_torch(tmp_path / "sub" / "x.pt", {"w": torch.arange(3)})
    assert torch.equal(load_torch(path)["w"], torch.arange(3))
    assert path.stat().st_mode & 0o044  # readable by others, unlike mkstemp's 0600


def test_load_refuses_pickled_code(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"f": Path("x")}, path)  # an arbitrary object needs full unpickling
    with pytest.raises(UserError, match="cannot read checkpoint"):
        load_torch(path)


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="checkpoint not found"):
        load_torch(tmp_path / "nope.pt")

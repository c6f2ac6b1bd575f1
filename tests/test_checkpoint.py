"""The checkpoint module: one layout for every kind, one reader dispatching on ``format``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from qsearch.checkpoint import (
    FLOAT_FORMAT,
    KINDS,
    load_checkpoint,
    save_dynamic,
    save_quantized,
    write_checkpoint,
)
from qsearch.config import freeze_config
from qsearch.dynamic.model import build_dynamic
from qsearch.dynamic.settings import DynamicSettings, plan_dynamic
from qsearch.errors import UserError
from qsearch.quant.layers import calibrate, quantize_model
from qsearch.quant.policy import Policy
from qsearch.setup import Setup
from tests.conftest import compose

# the entries of each kind's file; the layout older qsearch versions wrote and read
LAYOUT = {
    "float": {"format", "config", "meta", "state_dict"},
    "quantized": {"format", "config", "meta", "state_dict", "policy"},
    "dynamic": {"format", "config", "meta", "state_dict", "policy", "plan"},
}


def _save(kind: str, path: Path) -> nn.Module:
    """A LeNet-5 of ``kind`` with random weights (quantizers calibrated), saved to ``path``."""
    cfg = compose("dynamic")
    torch.manual_seed(0)
    setup = Setup.from_config(cfg)
    model, inventory, spec, info = setup.float_model, setup.inventory, setup.spec, setup.info
    policy = Policy.uniform("lenet5", "digits", [layer.name for layer in inventory], 3, 3, 8)
    images = torch.randn(16, info.in_channels, info.image_size, info.image_size)
    if kind == "float":
        config = freeze_config(cfg, ("model", "dataset"))
        write_checkpoint(path, FLOAT_FORMAT, model, config, {"epochs": 0})
    elif kind == "quantized":
        model = quantize_model(model, policy, spec)
        calibrate(model, images)
        save_quantized(path, model, policy, cfg, {"epochs": 0})
    else:
        settings = DynamicSettings.from_config(cfg.dynamic)
        plan = plan_dynamic(policy, settings, spec, static_last=True)
        model = build_dynamic(model, inventory, policy, plan, spec, settings)
        calibrate(model, images)
        save_dynamic(path, model, policy, plan, settings, cfg, {"epochs": 0})
    return model


@pytest.mark.parametrize("kind", list(LAYOUT))
def test_every_kind_round_trips_through_the_one_reader(kind: str, tmp_path: Path) -> None:
    model = _save(kind, tmp_path / "model.pt")
    blob = torch.load(tmp_path / "model.pt", weights_only=True)
    assert set(blob) == LAYOUT[kind] and KINDS[blob["format"]] == kind
    loaded = load_checkpoint(tmp_path)  # a run directory holding model.pt
    assert loaded.kind == kind and loaded.meta == {"epochs": 0}
    assert (loaded.plan is not None) == (kind == "dynamic")
    a, b = model.state_dict(), loaded.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    others = tuple(k for k in LAYOUT if k != kind)
    with pytest.raises(UserError, match=f"is a {kind} checkpoint; this needs a"):
        load_checkpoint(tmp_path / "model.pt", kinds=others)


def test_a_foreign_file_is_named_as_such(tmp_path: Path) -> None:
    torch.save({"format": "other/1", "state_dict": {}}, tmp_path / "x.pt")
    with pytest.raises(UserError, match="is not a qsearch quantized checkpoint"):
        load_checkpoint(tmp_path / "x.pt", kinds=("quantized",))

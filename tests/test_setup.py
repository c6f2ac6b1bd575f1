"""``Setup.from_config``: what every command builds first, built once and lazily."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qsearch.errors import UserError
from qsearch.setup import Setup
from tests.conftest import compose


def test_model_and_inventory_come_without_reading_data(tmp_path: Path) -> None:
    cfg = compose("finetune", "model=resnet20", "dataset=cifar10", f"data_root={tmp_path}")
    setup = Setup.from_config(cfg)
    assert len(setup.inventory) == 20  # resnet20: 19 convs + the classifier
    assert setup.spec.name == "lsq"
    with pytest.raises(UserError, match="cifar10 not found"):
        setup.data  # noqa: B018 (read on first use, and only then)


def test_policy_resolves_the_requested_bits() -> None:
    setup = Setup.from_config(compose("finetune", "w_bits=3", "a_bits=4"))
    policy = setup.policy()
    assert policy.w_bits == [8, 3, 3, 3, 8] and policy.a_bits == [8, 4, 4, 4, 8]
    with pytest.raises(UserError):
        Setup.from_config(compose("finetune", "w_bits=3", "a_bits=4", "policy=uniform_4")).policy()


def test_float_checkpoint_is_trained_once_then_cached(tmp_path: Path) -> None:
    overrides = (f"cache_dir={tmp_path}", "train.epochs=1", "runtime.device=cpu")
    setup = Setup.from_config(compose("finetune", "w_bits=4", *overrides))
    assert setup.cached_float_checkpoint() is None  # an empty cache: nothing trained
    checkpoint = setup.float_checkpoint()
    assert setup.float_checkpoint() is checkpoint  # fetched once
    again = Setup.from_config(compose("finetune", "w_bits=4", *overrides))
    cached = again.cached_float_checkpoint()
    assert cached is not None and cached.path == checkpoint.path
    theirs_all = again.float_model.state_dict().values()
    for (name, ours), theirs in zip(
        setup.float_model.state_dict().items(), theirs_all, strict=True
    ):
        assert torch.equal(ours.cpu(), theirs.cpu()), name  # both hold the trained weights

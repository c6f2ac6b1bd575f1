"""Every option of every config group composes, and each instantiable node instantiates."""

from __future__ import annotations

import pytest
from hydra.utils import get_object

from qsearch.commands import COMMANDS
from qsearch.config import config_dir, group_options
from qsearch.data import build_data
from qsearch.errors import UserError
from tests.conftest import GROUP_PACKAGE, compose, compose_filled

GROUPS = sorted(
    p.name
    for p in config_dir().iterdir()
    if p.is_dir() and p.name not in ("hydra", "shared") and list(p.glob("*.yaml"))
)
# groups placed under another key by the primary configs (`recipe@train: float`)
OPTIONS = [(group, option) for group in GROUPS for option in group_options(group)]


def _targets(node: object) -> list[str]:
    """Every ``_target_`` string inside a config node."""
    if isinstance(node, dict):
        found = [node["_target_"]] if "_target_" in node else []
        return found + [t for value in node.values() for t in _targets(value)]
    if isinstance(node, list):
        return [t for value in node for t in _targets(value)]
    return []


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_has_a_primary_config(command: str) -> None:
    assert compose_filled(command).seed == 0


@pytest.mark.parametrize("command", ["evaluate", "export"])
def test_missing_required_key_is_named(command: str) -> None:
    with pytest.raises(UserError, match=r"checkpoint must be set \(add checkpoint=\.\.\."):
        compose(command)


@pytest.mark.parametrize(("group", "option"), OPTIONS)
def test_every_group_option_composes_and_its_targets_import(group: str, option: str) -> None:
    from omegaconf import OmegaConf

    key = GROUP_PACKAGE.get(group, group)
    command = next(c for c in COMMANDS if key in compose_filled(c))
    override = f"{group}@{key}={option}" if key != group else f"{group}={option}"
    cfg = compose_filled(command, override)
    node = OmegaConf.to_container(cfg[key], resolve=False)
    for target in _targets(node):
        assert callable(get_object(target)), target


@pytest.mark.parametrize("option", group_options("dataset"))
def test_every_dataset_builds_or_says_how_to_get_it(option: str, tmp_path) -> None:
    overrides = [f"dataset={option}", f"data_root={tmp_path}", f"cache_dir={tmp_path}"]
    if option == "imagefolder":
        overrides.append(f"dataset.source.root={tmp_path}")
    cfg = compose("train", *overrides)
    if option == "digits":
        assert len(build_data(cfg.dataset).test) == 360
    else:
        with pytest.raises(UserError, match=str(tmp_path)):
            build_data(cfg.dataset)


def test_recipe_follows_the_dataset_unless_overridden() -> None:
    assert compose("train", "dataset=cifar10").train.lr == 0.1
    assert compose("train", "dataset=cifar10", "train.lr=0.02").train.lr == 0.02


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model=nope", r"unknown model 'nope' \(choose from: .*lenet5"),
        ("train.epoch=3", r"unknown config key 'train\.epoch'"),
        ("seed=abc", "seed must be an integer, got 'abc'"),
        ("train.lr=fast", "train.lr must be a number, got 'fast'"),
        ("force=maybe", "force must be true or false"),
        ("model=lenet5,nope", "unknown model 'nope'"),
        ("model=[", "cannot parse overrides"),
    ],
)
def test_bad_overrides_are_one_line_user_errors(override: str, message: str) -> None:
    with pytest.raises(UserError, match=message) as info:
        compose("train", override)
    assert "\n" not in str(info.value)


def test_sweeps_and_hydra_overrides_validate() -> None:
    cfg = compose("train", "model=lenet5,resnet20", "seed=range(2)", "hydra.job.chdir=false")
    assert cfg.model.name == "lenet5" and cfg.seed == 0

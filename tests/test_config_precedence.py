"""Whatever an agent, evaluator or experiment config sets wins over the primary config's
own defaults: each key such a file sets is checked in the config that actually composes
(what ``qsearch search <group>=<option> --cfg job`` prints), not in the YAML."""

from __future__ import annotations

from typing import Any

import pytest
from omegaconf import DictConfig, OmegaConf

from qsearch.config import config_dir, group_options
from tests.conftest import compose


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b.c": value}`` for every leaf of a nested config (lists count as leaves)."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out |= _leaves(value, f"{prefix}.{key}" if prefix else str(key))
        return out
    return {prefix: node}


def _set_keys(group: str, option: str) -> dict[str, Any]:
    """The keys a group option sets, at their global paths (its ``# @package`` header)."""
    path = config_dir() / group / f"{option}.yaml"
    content = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    assert isinstance(content, dict)
    content.pop("defaults", None)
    if "@package _global_" not in path.read_text().splitlines()[0]:
        content = {group: content}
    return _leaves(content)


CASES = [
    (group, option)
    for group in ("agent", "evaluator", "experiment")
    for option in group_options(group)
]


@pytest.mark.parametrize(("group", "option"), CASES)
def test_option_settings_win_over_primary_defaults(group: str, option: str) -> None:
    cfg = compose("search", f"{group}={option}")
    for key, expected in _set_keys(group, option).items():
        if isinstance(expected, str) and "${" in expected:
            continue  # an interpolation: resolved in the composed config
        composed = OmegaConf.select(cfg, key)
        if isinstance(composed, DictConfig | list) or OmegaConf.is_config(composed):
            composed = OmegaConf.to_container(composed, resolve=False)
        assert composed == expected, f"{group}={option} sets {key}={expected}, got {composed}"


def test_haq_searches_its_own_space() -> None:
    search = compose("search", "agent=haq").search
    assert search.search_activations is True
    assert list(search.w_bits) == [2, 3, 4, 5, 6, 7, 8]
    assert compose("search", "agent=random").search.search_activations is False


def test_command_line_still_wins_over_the_agent() -> None:
    cfg = compose("search", "agent=haq", "search.search_activations=false")
    assert cfg.search.search_activations is False


@pytest.mark.parametrize(
    ("overrides", "alpha"),
    [
        (("dataset=cifar10",), 0.5),  # measured to help there (conf/dataset/cifar10.yaml)
        (("dataset=mnist",), 0.0),
        (("dataset=cifar10", "finetune.distill.alpha=0"), 0.0),  # the command line wins
    ],
)
def test_finetune_distillation_follows_the_dataset_recipe(
    overrides: tuple[str, ...], alpha: float
) -> None:
    cfg = compose("finetune", *overrides)
    assert cfg.finetune.distill.alpha == alpha

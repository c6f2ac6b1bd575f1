"""The evaluation cache's key covers everything that changes an accuracy: the float
weights' content (not the recipe's name), device, precision, compiled kernels and the
evaluator's own version, and the quantizer's settings, not only its name."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from qsearch.env import evaluator as evaluator_module
from qsearch.env.evaluator import PolicyEvaluator, RetrainConfig
from qsearch.models import build_model
from qsearch.quant.kernels import set_compile
from qsearch.quant.layers import QuantizerSpec
from qsearch.setup import Setup
from tests.conftest import compose

CFG = compose("search", "runtime.precision=fp32", "runtime.device=cpu")
SETUP = Setup.from_config(CFG)
DATA, RUNTIME = SETUP.data, SETUP.runtime


def _key(
    model: torch.nn.Module,
    tmp_path: Path,
    spec: QuantizerSpec = SETUP.spec,
    **runtime_changes: object,
) -> str:
    runtime = dataclasses.replace(RUNTIME, **runtime_changes)
    evaluator = PolicyEvaluator(
        model,
        DATA,
        runtime,
        spec,
        RetrainConfig.from_config(CFG.evaluator, steps=0),
        seed=0,
        cache_dir=tmp_path,
        context={"float": "lenet5-digits-s0-samerecipe"},
    )
    return evaluator.context_key


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(CFG.model, DATA.info)


def test_key_follows_the_weights_not_the_recipe_name(tmp_path: Path) -> None:
    assert _key(_model(0), tmp_path) == _key(_model(0), tmp_path)
    retrained = _model(0)
    with torch.no_grad():
        next(retrained.parameters()).view(-1)[0] += 1e-3  # a retrained float model
    assert _key(retrained, tmp_path) != _key(_model(0), tmp_path)


def test_key_follows_precision_layout_compile_and_version(tmp_path: Path, monkeypatch) -> None:
    base = _key(_model(0), tmp_path)
    assert _key(_model(0), tmp_path, bf16=True) != base
    assert _key(_model(0), tmp_path, channels_last=not RUNTIME.channels_last) != base
    set_compile(True)
    try:
        assert _key(_model(0), tmp_path) != base
    finally:
        set_compile(False)
    monkeypatch.setattr(evaluator_module, "EVALUATOR_VERSION", 999)
    assert _key(_model(0), tmp_path) != base


def test_key_follows_the_quantizers_settings(tmp_path: Path) -> None:
    base = _key(_model(0), tmp_path)
    for override in ("quantizer.activation.step_init=lsq", "quantizer.weight.per_channel=true"):
        spec = QuantizerSpec.from_config(compose("search", override).quantizer)
        assert spec.name == SETUP.spec.name and _key(_model(0), tmp_path, spec) != base

"""The evaluator's proxies (batch-norm re-estimation, distillation) and its divergence guard."""

from __future__ import annotations

import torch

from qsearch.env import evaluator as evaluator_module
from qsearch.env.evaluator import PolicyEvaluator, RetrainConfig
from qsearch.models import build_model, model_inventory
from qsearch.quant.bn import reestimate_bn
from qsearch.quant.policy import Policy
from qsearch.setup import Setup
from qsearch.train.distill import distillation_loss
from tests.conftest import compose

CFG = compose("search", "model=simplenet", "runtime.precision=fp32", "runtime.device=cpu")
SETUP = Setup.from_config(CFG)
DATA, RUNTIME, SPEC = SETUP.data, SETUP.runtime, SETUP.spec


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(CFG.model, DATA.info)


def _policy(model: torch.nn.Module) -> Policy:
    names = [layer.name for layer in model_inventory(model, DATA.info)]
    return Policy.uniform("simplenet", "digits", names, 3, 3, pin_first_last=8)


def _accuracy(model: torch.nn.Module, **retrain: object) -> float:
    evaluator = PolicyEvaluator(
        model, DATA, RUNTIME, SPEC, RetrainConfig.from_config(CFG.evaluator, **retrain), seed=0
    )
    return evaluator(_policy(model)).accuracy


def test_bn_reestimation_runs_on_that_many_train_batches_before_scoring(monkeypatch) -> None:
    calls: list[int] = []

    def spy(model: torch.nn.Module, batches) -> int:
        used = reestimate_bn(model, batches)
        calls.append(used)
        return used

    monkeypatch.setattr(evaluator_module, "reestimate_bn", spy)
    model = _model()
    without = _accuracy(model, steps=0)
    assert calls == []
    with_bn = _accuracy(model, steps=0, bn_batches=3)
    assert calls == [3]
    assert with_bn != without  # an untrained net's running statistics are far off


def test_distillation_loss_drives_the_retraining(monkeypatch) -> None:
    teachers: list[torch.nn.Module] = []
    batches: list[int] = []

    def spy(teacher: torch.nn.Module, alpha: float, temperature: float):
        teachers.append(teacher)
        loss = distillation_loss(teacher, alpha, temperature)

        def counted(logits, labels, images):
            batches.append(len(labels))
            return loss(logits, labels, images)

        return counted

    monkeypatch.setattr(evaluator_module, "distillation_loss", spy)
    model = _model()
    _accuracy(model, steps=2)
    assert teachers == []
    _accuracy(model, steps=2, distill_alpha=0.5)
    assert len(teachers) == 1 and len(batches) == 2
    float_weights = dict(model.state_dict())
    for name, tensor in teachers[0].state_dict().items():  # the teacher is the float model
        assert torch.equal(tensor, float_weights[name])


def test_proxy_settings_are_part_of_the_cache_key() -> None:
    model = _model()
    keys = {
        PolicyEvaluator(
            model, DATA, RUNTIME, SPEC, RetrainConfig.from_config(CFG.evaluator, **retrain), seed=0
        ).context_key
        for retrain in ({}, {"distill_alpha": 0.5}, {"bn_batches": 4})
    }
    assert len(keys) == 3


def test_a_diverging_retraining_scores_chance_and_the_search_goes_on() -> None:
    """A policy whose retraining diverges gets chance accuracy (not an exception)."""
    model = _model()
    assert _accuracy(model, steps=10, lr=1e30) == 100.0 / DATA.info.num_classes

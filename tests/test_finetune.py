"""Fine-tuning: regularizer math, distillation, training, resume, checkpoints, CLI."""

from __future__ import annotations

import copy
import itertools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from qsearch.checkpoint import load_checkpoint, save_quantized
from qsearch.data import build_data
from qsearch.errors import UserError
from qsearch.models import build_model, model_inventory
from qsearch.quant.layers import QuantizerSpec, quant_layers
from qsearch.quant.policy import Policy
from qsearch.quant.regularizer import PeriodicRegularizer, lambda_schedule, periodic_penalty
from qsearch.train.distill import distillation_loss
from qsearch.train.finetune import build_quantized, finetune
from qsearch.train.fit import Monitor, TrainContext
from qsearch.train.float_model import load_float_weights, train_float
from qsearch.train.loop import evaluate
from qsearch.train.recipe import FinetuneRecipe
from qsearch.train.runtime import resolve_runtime
from tests.conftest import compose, run_qsearch


def test_periodic_penalty_hand_values() -> None:
    step = torch.tensor([0.5])
    on_grid = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.5])
    assert periodic_penalty(on_grid, step).item() == pytest.approx(0.0, abs=1e-12)
    halfway = torch.tensor([0.25, -0.75])
    assert periodic_penalty(halfway, step).item() == pytest.approx(1.0)
    quarter = torch.tensor([0.125])  # sin^2(pi/4) = 1/2
    assert periodic_penalty(quarter, step).item() == pytest.approx(0.5)
    per_channel = periodic_penalty(torch.tensor([[0.25], [0.25]]), torch.tensor([0.5, 1.0]))
    assert per_channel.item() == pytest.approx((1.0 + math.sin(math.pi / 4) ** 2) / 2)


def test_lambda_schedule_rises_to_max() -> None:
    values = [lambda_schedule(p / 10, 2.0, "exp") for p in range(11)]
    assert values[0] == pytest.approx(2e-3) and values[-1] == pytest.approx(2.0)
    assert all(a < b for a, b in itertools.pairwise(values))
    assert lambda_schedule(0.5, 2.0, "linear") == pytest.approx(1.0)
    assert lambda_schedule(0.1, 2.0, "constant") == 2.0
    with pytest.raises(ValueError, match="unknown lambda schedule"):
        lambda_schedule(0.5, 1.0, "cosine")


def test_distillation_loss_hand_computed() -> None:
    teacher = torch.nn.Linear(2, 2, bias=False)
    teacher.weight.data = torch.eye(2)
    images = torch.tensor([[1.0, 0.0]])
    logits, labels = torch.tensor([[0.0, 1.0]]), torch.tensor([0])
    loss = distillation_loss(teacher, alpha=0.5, temperature=2.0)(logits, labels, images)
    p_t = F.softmax(torch.tensor([0.5, 0.0]), 0)
    p_s = F.softmax(torch.tensor([0.0, 0.5]), 0)
    kl = (p_t * (p_t.log() - p_s.log())).sum() * 4
    ce = F.cross_entropy(logits, labels)
    assert loss.item() == pytest.approx((0.5 * ce + 0.5 * kl).item())


@pytest.fixture(scope="module")
def digits_setup(tmp_path_factory: pytest.TempPathFactory):
    cache = tmp_path_factory.mktemp("cache")
    cfg = compose(
        "finetune",
        f"cache_dir={cache}",
        "train.epochs=12",
        "train.lr=0.1",
        "runtime.precision=fp32",
        "finetune.epochs=3",
    )
    data = build_data(cfg.dataset)
    runtime = resolve_runtime(cfg.runtime)
    model = build_model(cfg.model, data.info)
    load_float_weights(model, train_float(cfg, data, runtime))
    inventory = model_inventory(model, data.info)
    names = [layer.name for layer in inventory]
    return cfg, data, runtime, model, names


def _finetune(setup, policy: Policy, **recipe: object):
    """Fine-tune ``policy``; ``recipe`` overrides entries of a copy of the fixture's config."""
    cfg, data, runtime, model, _ = setup
    cfg = copy.deepcopy(cfg)  # the fixture is shared by the module: never change it
    for key, value in recipe.items():
        cfg.finetune[key] = value
    spec = QuantizerSpec.from_config(cfg.quantizer)
    context = TrainContext(data, runtime, cfg.dataset, seed=0)
    return finetune(
        model, policy, spec, FinetuneRecipe.from_config(cfg.finetune), context, Monitor(log=False)
    )


def test_fixture_config_is_not_changed_by_a_test(digits_setup) -> None:
    before = OmegaConf.to_container(digits_setup[0].finetune, resolve=True)
    names = digits_setup[4]
    policy = Policy.uniform("lenet5", "digits", names, 4, 4, 8)
    _finetune(
        digits_setup, policy, epochs=1, regularizer={"lambda_max": 9.0, "schedule": "constant"}
    )
    assert OmegaConf.to_container(digits_setup[0].finetune, resolve=True) == before


def test_finetune_recovers_low_bit_accuracy(digits_setup) -> None:
    names = digits_setup[4]
    result = _finetune(digits_setup, Policy.uniform("lenet5", "digits", names, 2, 2, 8))
    acc = result.accuracy
    assert acc["after_val"] > acc["before_val"] + 5  # 2 bits hurt; fine-tuning repairs it
    assert acc["after_val"] > 85
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    lambdas = [row["lambda"] for row in result.history]
    assert lambdas == sorted(lambdas) and lambdas[-1] <= 0.1


def test_regularizer_pulls_weights_onto_the_grid(digits_setup) -> None:
    names = digits_setup[4]
    policy = Policy.uniform("lenet5", "digits", names, 3, 8, None)
    penalties = {}
    for lam in (0.0, 50.0):
        result = _finetune(
            digits_setup, policy, regularizer={"lambda_max": lam, "schedule": "constant"}
        )
        penalties[lam] = float(PeriodicRegularizer(result.model, 1.0, "constant").penalty())
    assert penalties[50.0] < 0.5 * penalties[0.0]


def test_quantized_checkpoint_round_trip(digits_setup, tmp_path: Path) -> None:
    cfg, data, runtime, _, names = digits_setup
    policy = Policy.uniform("lenet5", "digits", names, 3, 4, 8)
    result = _finetune(digits_setup, policy, epochs=1)
    path = save_quantized(tmp_path / "q.pt", result.model, policy, cfg, {"note": 1})
    loaded = load_checkpoint(path, kinds=("quantized",))
    assert loaded.policy.layers == policy.layers and loaded.meta == {"note": 1}
    assert {name for name, _ in quant_layers(loaded.model)} == set(names)
    from qsearch.data import eval_loader

    loader = eval_loader(data, "test")
    original = evaluate(result.model, loader, runtime).accuracy
    assert evaluate(loaded.model, loader, runtime).accuracy == original


def test_damaged_quantized_checkpoint_is_a_user_error(digits_setup, tmp_path: Path) -> None:
    cfg, data, runtime, float_model, names = digits_setup
    policy = Policy.uniform("lenet5", "digits", names, 3, 4, 8)
    spec = QuantizerSpec.from_config(cfg.quantizer)
    model = build_quantized(float_model, policy, spec, data, runtime)
    blob = torch.load(save_quantized(tmp_path / "q.pt", model, policy, cfg, {}), weights_only=True)
    weights = {**blob["state_dict"], f"{names[0]}.weight": torch.zeros(1)}
    for name, broken, message in [
        ("no_config", {**blob, "config": None}, r"malformed quantized checkpoint \(\w+Error\)"),
        ("no_meta", {k: v for k, v in blob.items() if k != "meta"}, r"\(KeyError\)"),
        ("bad_yaml", {**blob, "config": "model: [open"}, r"malformed quantized .*Error\)$"),
        ("policy_list", {**blob, "policy": [1]}, "is not a qsearch policy"),
        ("reshaped", {**blob, "state_dict": weights}, "weights do not fit the model: Error"),
    ]:
        torch.save(broken, tmp_path / f"{name}.pt")
        with pytest.raises(UserError, match=message):
            load_checkpoint(tmp_path / f"{name}.pt", kinds=("quantized",))


def test_finetune_evaluate_and_resume_cli(tmp_path: Path) -> None:
    common = ["train.epochs=3", "finetune.epochs=2", "runtime.precision=fp32"]
    done = run_qsearch("finetune", "policy=uniform_w3a4", *common, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    run = next((tmp_path / "outputs" / "finetune").iterdir())
    assert {"model.pt", "policy.yaml", "metrics.json", "curves.png"} <= {
        p.name for p in run.iterdir()
    }
    assert not (run / "last.pt").exists()
    assert Policy.load(run).metadata["quantizer"] == "lsq"

    evaluated = run_qsearch("evaluate", f"checkpoint={run}", "runtime.precision=fp32", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert "test accuracy" in evaluated.stdout

    again = run_qsearch("finetune", f"resume={run}", cwd=tmp_path)  # finished: re-runs to the end
    assert again.returncode == 0, again.stderr
    assert len(list((tmp_path / "outputs" / "finetune").iterdir())) == 1

    for args, message in [
        (["finetune", f"resume={run}", "seed=3"], "give no other overrides"),
        (["finetune", f"resume={tmp_path}"], "is not a qsearch run directory"),
        (["finetune", "w_bits=9"], "w_bits=9 is out of range"),
        (["evaluate", f"checkpoint={tmp_path / 'none.pt'}"], "checkpoint not found"),
    ]:
        failed = run_qsearch(*args, cwd=tmp_path)
        assert failed.returncode == 2 and message in failed.stderr, failed.stderr

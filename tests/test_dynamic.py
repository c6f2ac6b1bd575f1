"""Instance-aware dynamic quantization: controller, dynamic layers, cost, training, CLI."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from qsearch.checkpoint import load_checkpoint, save_dynamic
from qsearch.data import build_data, eval_loader
from qsearch.dynamic.controller import BitController, choose
from qsearch.dynamic.model import DynamicQuantModel, build_dynamic
from qsearch.dynamic.settings import DynamicSettings, plan_dynamic
from qsearch.dynamic.train import DynamicSetup, evaluate_dynamic, train_dynamic
from qsearch.errors import UserError
from qsearch.models import build_model, model_inventory
from qsearch.models.inventory import layer_inventory
from qsearch.models.lenet import LeNet5
from qsearch.quant.layers import QuantizerSpec, calibrate
from qsearch.quant.policy import Policy
from qsearch.train.fit import Monitor, TrainContext
from qsearch.train.float_model import load_float_weights, train_float
from qsearch.train.recipe import DynamicRecipe
from qsearch.train.runtime import resolve_runtime
from tests.conftest import compose, run_qsearch


def _spec(name: str = "lsq") -> QuantizerSpec:
    return QuantizerSpec.from_config(compose("dynamic", f"quantizer={name}").quantizer)


def _tiny(w: int = 3, a: int = 3, quantizer: str = "lsq", **settings: object):
    """A calibrated dynamic LeNet-5 on 8x8 inputs (random weights), and its plan."""
    torch.manual_seed(0)
    model = LeNet5(image_size=8)
    inventory = layer_inventory(model, (1, 8, 8))
    policy = Policy.uniform("lenet5", "x", [lay.name for lay in inventory], w, a, 8)
    dynamic = DynamicSettings(**settings)  # type: ignore[arg-type]
    spec = _spec(quantizer)
    plan = plan_dynamic(policy, dynamic, spec, static_last=True)
    net = build_dynamic(model, inventory, policy, plan, spec, dynamic)
    calibrate(net, torch.randn(32, 1, 8, 8))
    return net, plan


@pytest.mark.parametrize("in_shape", [(6, 4, 4), (24,)])
def test_controller_shapes_and_hard_one_hot(in_shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    controller = BitController(in_shape, layers=3, choices=4, hidden=16, pool=2)
    with torch.no_grad():  # leave the zero init so the logits vary
        controller.mlp[-1].weight.normal_()
    logits = controller(torch.randn(5, *in_shape))
    assert logits.shape == (5, 3, 4) and logits.dtype == torch.float32
    sample = choose(logits, tau=1.0, training=True)
    assert sample.shape == (5, 3, 4) and sample.requires_grad
    assert set(sample.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(sample.sum(-1), torch.ones(5, 3))
    greedy = choose(logits, tau=1.0, training=False)
    assert torch.equal(greedy.argmax(-1), logits.argmax(-1))
    assert torch.equal(greedy.sum(-1), torch.ones(5, 3))


@pytest.mark.parametrize(
    ("offsets", "base_prob", "expected"),
    [
        ((-1, 0, 1), 0.5, [0.25, 0.5, 0.25]),
        ((0, 1, 2, 3), 0.7, [0.7, 0.1, 0.1, 0.1]),
        ((-1, 0), 0.5, [0.5, 0.5]),
        ((1, 2), 0.9, [0.5, 0.5]),  # no base candidate: uniform
    ],
)
def test_controller_starts_at_its_prior(offsets, base_prob, expected) -> None:
    settings = DynamicSettings(offsets=offsets, base_prob=base_prob)
    assert settings.prior() == pytest.approx(expected)
    controller = BitController(
        (6, 4, 4), layers=2, choices=len(offsets), hidden=8, pool=2, prior=settings.prior()
    )
    probs = controller(torch.randn(5, 6, 4, 4)).softmax(-1)
    assert torch.allclose(probs, torch.tensor(expected).expand(5, 2, -1), atol=1e-6)


@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
def test_each_sample_gets_exactly_its_chosen_bits(training: bool) -> None:
    """Inference routes each sample to its candidate; training mixes all K outputs with the
    one-hot. Either way a sample's output is the layer at its chosen bits."""
    net, plan = _tiny()
    x = torch.randn(16, 1, 8, 8)
    layer = net.dynamic_layers()[0]  # features.3, a conv
    captured: dict[str, torch.Tensor] = {}
    # a copy: the in-place ReLU after this conv overwrites its output tensor
    hook = layer.register_forward_hook(lambda m, i, o: captured.update(x=i[0], out=o.clone()))
    with torch.no_grad():
        net.controller.mlp[-1].bias.copy_(torch.randn(len(plan.dynamic) * plan.choices))
        net.controller.mlp[-1].weight.normal_()
    net.train(training)
    with torch.set_grad_enabled(training):
        net(x)
    hook.remove()
    picked = net.last_choice[:, 0].argmax(-1)
    assert len(picked.unique()) > 1  # the check below covers more than one candidate
    with torch.no_grad():
        for k in range(plan.choices):
            w = layer.weight_quants[k](layer.weight)
            expected = layer._conv_forward(layer.act_quants[k](captured["x"]), w, layer.bias)
            rows = picked == k
            assert torch.allclose(captured["out"][rows], expected[rows], atol=1e-6)


def test_routed_training_pass_has_the_gradients_of_the_full_mixture() -> None:
    """The layer's cheap form equals ``sum_k m_k * out_k`` (eq. 4): values and gradients of
    the choice, the weights and every quantizer's parameters."""
    net, plan = _tiny()
    layer = net.dynamic_layers()[0]
    x = torch.randn(16, 6, 4, 4).relu()
    logits = torch.randn(16, plan.choices, requires_grad=True)
    choice = F.gumbel_softmax(logits, tau=1.0, hard=True)
    assert len(choice.argmax(-1).unique()) == plan.choices
    weights = torch.randn(16, 16, 4, 4)
    params = [logits, *layer.parameters()]
    assert len(params) > 4  # weight, bias and the learned LSQ steps

    layer.choice = choice
    routed = layer.forward(x)  # not layer(x): the controller's pre-hook would set the choice
    fast = torch.autograd.grad((routed * weights).sum(), params, retain_graph=True)
    full = sum(choice[:, k, None, None, None] * layer._candidate(k, x) for k in range(3))
    slow = torch.autograd.grad((full * weights).sum(), params)
    assert torch.allclose(routed, full, atol=1e-6)
    for name, a, b in zip(["logits", *dict(layer.named_parameters())], fast, slow, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), name


def test_gradients_reach_the_controller() -> None:
    net, _ = _tiny()
    with torch.no_grad():  # the zero-initialized head would block the earlier layers
        net.controller.mlp[-1].weight.normal_()
    net.train()
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    F.cross_entropy(net(x), y).backward()
    for name, param in net.controller.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    net.zero_grad()
    net(x)  # the cost alone also trains the controller (through the one-hot)
    net.cost.relative(net.last_choice).mean().backward()
    head = net.controller.mlp[-1]
    assert head.bias.grad is not None and head.bias.grad.abs().sum() > 0


def test_cost_counts_bitops_of_the_chosen_bits() -> None:
    net, plan = _tiny()
    inventory = layer_inventory(LeNet5(image_size=8), (1, 8, 8))
    macs = {layer.name: layer.macs for layer in inventory}
    static = sum(macs[n] * b.w_bits * b.a_bits for n, b in plan.static.items())
    reference = static + sum(macs[n] * 9 for n in plan.dynamic)
    assert net.cost.reference == pytest.approx(reference)
    choice = torch.zeros(2, len(plan.dynamic), 3)
    choice[0, :, 1] = 1  # everything at the base bits (3)
    choice[1, :, 2] = 1  # everything at 4 bits
    bitops = net.cost.bitops(choice)
    assert bitops[0] == pytest.approx(reference)
    assert bitops[1] == pytest.approx(static + sum(macs[n] * 16 for n in plan.dynamic))
    assert net.cost.relative(choice)[0] == pytest.approx(1.0)


def test_inference_bits_are_deterministic_and_per_sample() -> None:
    net, _ = _tiny()
    with torch.no_grad():
        net.controller.mlp[-1].weight.normal_()
    x = torch.randn(64, 1, 8, 8)
    net.eval()
    net(x)
    first = net.last_choice.clone()
    net(x)
    assert torch.equal(net.last_choice, first)
    net(x[5:6])  # a sample's bits do not depend on the rest of the batch
    assert torch.equal(net.last_choice[0], first[5])
    assert len(first.argmax(-1).unique(dim=0)) > 1  # different samples, different bits
    net.train()  # training samples the choices (Gumbel noise)
    net(x)
    sampled = net.last_choice.detach().clone()
    net(x)
    assert not torch.equal(net.last_choice, sampled)


@pytest.mark.parametrize(
    ("w", "a", "quantizer", "settings", "message"),
    [
        (8, 8, "lsq", {}, "candidate bits must lie in 1..8"),
        (2, 1, "dorefa", {}, "gets candidate w1a0"),
        (2, 2, "lsq", {}, "quantizer lsq supports weight bits 2..8"),
        (4, 4, "lsq", {"offsets": (0,)}, "at least 2 distinct offsets"),
        (4, 4, "lsq", {"offsets": (1, 1)}, "at least 2 distinct offsets"),
        (4, 4, "lsq", {"controller_layers": 4}, "no layer left to make dynamic"),
    ],
)
def test_plan_errors_are_user_errors(
    w: int, a: int, quantizer: str, settings: dict, message: str
) -> None:
    with pytest.raises(UserError, match=message):
        _tiny(w, a, quantizer, **settings)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("dynamic.tau=0", "dynamic.tau must be positive"),
        ("dynamic.target=-1", "dynamic.target must be positive"),
        ("dynamic.alpha=-0.5", "dynamic.alpha must be >= 0"),
        ("dynamic.controller.hidden=0", "dynamic.controller.hidden must be positive"),
        ("dynamic.controller.base_prob=1", r"base_prob must lie in \(0, 1\), got 1.0"),
    ],
)
def test_settings_errors_are_user_errors(override: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        DynamicSettings.from_config(compose("dynamic", override).dynamic)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory):
    cache = tmp_path_factory.mktemp("cache")
    cfg = compose(
        "dynamic",
        f"cache_dir={cache}",
        "train.epochs=12",
        "train.lr=0.1",
        "runtime.precision=fp32",
        "finetune.epochs=4",
        "finetune.controller_lr=0.2",
    )
    data = build_data(cfg.dataset)
    runtime = resolve_runtime(cfg.runtime)
    model = build_model(cfg.model, data.info)
    load_float_weights(model, train_float(cfg, data, runtime))
    inventory = model_inventory(model, data.info)
    policy = Policy.uniform("lenet5", "digits", [lay.name for lay in inventory], 3, 3, 8)
    return cfg, data, runtime, model, inventory, policy


def _load_dynamic(path: Path):
    return load_checkpoint(path, kinds=("dynamic",))


def _train(digits, **dynamic: object):
    cfg, data, runtime, model, inventory, policy = digits
    settings = DynamicSettings(**dynamic)  # type: ignore[arg-type]
    spec = QuantizerSpec.from_config(cfg.quantizer)
    plan = plan_dynamic(policy, settings, spec, static_last=True)
    setup = DynamicSetup(inventory, policy, plan, spec, settings)
    context = TrainContext(data, runtime, cfg.dataset, seed=0)
    return train_dynamic(
        model, setup, DynamicRecipe.from_config(cfg.finetune), context, Monitor(log=False)
    ), plan


def test_cost_penalty_moves_average_bitops_to_the_target(digits) -> None:
    data, runtime = digits[1], digits[2]
    costs = {}
    for target in (0.8, 1.3):
        result, plan = _train(digits, target=target, alpha=5.0)
        val = evaluate_dynamic(result.model, eval_loader(data, "val"), runtime)
        costs[target] = val.mean_cost
        assert val.accuracy > 85
        # training starts at the controller's prior: the expected cost of its choices
        prior = torch.tensor(DynamicSettings().prior()).expand(1, len(plan.dynamic), -1)
        start = float(result.model.cost.relative(prior))
        assert 1.0 < start < 1.1
        assert abs(result.history[-1]["train_cost"] - target) < abs(start - target)
    assert costs[0.8] < 0.9 < 1.2 < costs[1.3]


def test_checkpoint_round_trip_and_mismatch(digits, tmp_path: Path) -> None:
    cfg, data, runtime, *_ = digits
    policy = digits[5]
    result, plan = _train(digits)
    settings = DynamicSettings()
    path = save_dynamic(tmp_path / "d.pt", result.model, policy, plan, settings, cfg, {"n": 1})
    blob = torch.load(path, weights_only=True)
    loaded = _load_dynamic(path)
    assert isinstance(loaded.model, DynamicQuantModel) and loaded.meta == {"n": 1}
    loader = eval_loader(data, "test")
    before = evaluate_dynamic(result.model, loader, runtime)
    after = evaluate_dynamic(loaded.model, loader, runtime)
    assert torch.equal(before.choices, after.choices) and after.accuracy == before.accuracy

    ragged = copy.deepcopy(blob)
    ragged["plan"]["dynamic"]["classifier.1"] = [[2, 2], [3, 3]]  # K=2 there, K=3 elsewhere
    torch.save(ragged, tmp_path / "ragged.pt")
    with pytest.raises(UserError, match=r"malformed dynamic plan \(every dynamic layer"):
        _load_dynamic(tmp_path / "ragged.pt")
    shrunk = copy.deepcopy(blob)
    shrunk["config"] = shrunk["config"].replace("hidden: 64", "hidden: 32")
    torch.save(shrunk, tmp_path / "shrunk.pt")
    with pytest.raises(UserError, match="weights do not fit the model"):
        _load_dynamic(tmp_path / "shrunk.pt")
    del blob["plan"]
    torch.save(blob, tmp_path / "no_plan.pt")
    with pytest.raises(UserError, match=r"malformed dynamic checkpoint \(KeyError\)"):
        _load_dynamic(tmp_path / "no_plan.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read checkpoint"):
        _load_dynamic(tmp_path / "junk.pt")


def test_dynamic_and_evaluate_cli(tmp_path: Path) -> None:
    common = ["train.epochs=3", "runtime.precision=fp32"]
    done = run_qsearch(
        "dynamic", "w_bits=3", "a_bits=3", "finetune.epochs=2", *common, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    run = next((tmp_path / "outputs" / "dynamic").iterdir())
    assert {"model.pt", "metrics.json", "dynamic.png"} <= {p.name for p in run.iterdir()}
    assert not (run / "last.pt").exists()
    metrics = json.loads((run / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics["history"]] == [1, 2]
    assert set(metrics["test"]["layers"]) == {"features.3", "classifier.1", "classifier.3"}
    # candidates {2, 3, 4} bound the mean to [0.44, 1.78]; the hinge must hold it near the
    # target (1.0): a controller that ignores the cost and picks the widest bits fails here
    relative = metrics["test"]["relative_bitops"]["mean"]
    assert 0.85 <= relative <= 1.05
    assert relative == pytest.approx(metrics["test"]["bitops"]["mean"] / metrics["static_bitops"])

    evaluated = run_qsearch("evaluate", f"checkpoint={run}", "runtime.precision=fp32", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert "bits chosen per layer" in evaluated.stdout
    report = json.loads(
        next((tmp_path / "outputs" / "evaluate").glob("*/evaluate.json")).read_text()
    )
    assert report["accuracy"]["test"] == pytest.approx(metrics["accuracy"]["test"])
    assert report["test"]["bitops"] == pytest.approx(metrics["test"]["bitops"])

    failed = run_qsearch("dynamic", "w_bits=8", "a_bits=8", *common, cwd=tmp_path)
    assert failed.returncode == 2 and "candidate bits must lie in 1..8" in failed.stderr
    assert failed.stderr.count("\n") == 1

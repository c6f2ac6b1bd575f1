"""The weight-sharing multi-bit supernet: switchable quantizers, the sandwich rule, the
cache, and ``evaluator=supernet`` through the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from qsearch.commands.search import build_space
from qsearch.data import Augment
from qsearch.errors import UserError
from qsearch.quant.layers import quant_layers, set_policy_bits
from qsearch.setup import Setup
from qsearch.supernet.evaluator import Scoring, SupernetEvaluator
from qsearch.supernet.model import (
    SwitchableQuantizer,
    build_supernet,
    calibrate_all_bits,
    extract_policy_model,
    score_policy,
    space_choices,
    switchables,
)
from qsearch.supernet.train import PolicySampler, SandwichLoss
from qsearch.train.loop import forward
from tests.conftest import compose, run_qsearch

CFG = compose(
    "supernet", "search.search_activations=true", "runtime.precision=fp32", "runtime.device=cpu"
)


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    setup = Setup.from_config(CFG)
    space = build_space(CFG, setup.inventory)
    model = build_supernet(setup.float_model, space_choices(space), setup.spec)
    images = setup.data.train.images[:64].float()
    calibrate_all_bits(model, images)
    return setup, space, model, images


def test_supernet_at_mixed_bits_equals_the_standalone_quantized_model(parts) -> None:
    setup, space, model, images = parts
    n = len(space.searchable)
    policy = space.policy([2, 5, 3][:n], [8, 2, 4][:n])
    standalone = extract_policy_model(model, policy, setup.spec, setup.float_model)
    assert type(standalone.get_submodule(space.names[1]).weight_quant).__name__ == "LsqQuantizer"
    model.eval(), standalone.eval()
    with torch.no_grad():
        assert torch.equal(model(images), standalone(images))
    other = space.policy([8] * n, [8] * n)
    set_policy_bits(model, other)
    with torch.no_grad():
        assert not torch.equal(model(images), standalone(images))  # the switch switches


def test_every_layer_has_one_quantizer_per_choice_with_its_own_step(parts) -> None:
    _, space, model, _ = parts
    layers = dict(quant_layers(model))
    inner = layers[space.names[space.searchable[0]]]
    assert sorted(int(b) for b in inner.weight_quant.quantizers) == space.w_choices
    assert sorted(int(b) for b in inner.act_quant.quantizers) == space.a_choices
    first = layers[space.names[0]]
    assert list(first.weight_quant.quantizers) == ["8"]  # pinned
    steps = {float(q.step.detach()) for q in inner.weight_quant.quantizers.values()}
    assert len(steps) == len(space.w_choices)  # initialized per bitwidth, all different
    assert all(bool(q.initialized) for s in switchables(model) for q in s.quantizers.values())


def test_bits_outside_the_choices_are_refused() -> None:
    switch = SwitchableQuantizer(Setup.from_config(CFG).spec.weight, "weight", [2, 4])
    switch.set_bits(4)
    with pytest.raises(
        UserError, match=r"no weight quantizer for 3 bits \(its choices: \[2, 4\]\)"
    ):
        switch.set_bits(3)


def test_sampler_draws_within_the_space_and_repeats_under_a_seed(parts) -> None:
    _, space, _, _ = parts
    sampler = PolicySampler(space)
    torch.manual_seed(3)
    first = [sampler.random().key() for _ in range(5)]
    torch.manual_seed(3)
    assert [sampler.random().key() for _ in range(5)] == first
    for _ in range(20):
        w, a = space.searched_bits(sampler.random())
        assert set(w) <= set(space.w_choices) and set(a) <= set(space.a_choices)
    assert space.searched_bits(sampler.lowest) == ([2] * len(space.searchable),) * 2
    assert sampler.highest.w_bits[0] == 8 and max(sampler.highest.w_bits) == 8


def test_sandwich_loss_is_labels_for_the_highest_and_kl_for_the_lowest(parts) -> None:
    setup, space, model, images = parts
    sampler = PolicySampler(space)
    labels = setup.data.train.labels[:64]
    model.train()
    with torch.no_grad():
        set_policy_bits(model, sampler.highest)
        high = forward(model, images, setup.runtime)
        set_policy_bits(model, sampler.lowest)
        low = forward(model, images, setup.runtime)
        set_policy_bits(model, sampler.highest)
        loss = SandwichLoss(model, sampler, setup.runtime, random_policies=0)(high, labels, images)
    expected = F.cross_entropy(high, labels) + F.kl_div(
        F.log_softmax(low, 1), F.softmax(high, 1), reduction="batchmean"
    )
    assert torch.allclose(loss, expected, atol=1e-6)
    assert all(s.bits == max(s.choices) for s in switchables(model))  # back at the highest


def test_scoring_changes_only_batch_norm_running_statistics() -> None:
    cfg = compose("supernet", "model=simplenet", "runtime.precision=fp32", "runtime.device=cpu")
    setup = Setup.from_config(cfg)
    space = build_space(cfg, setup.inventory)
    model = build_supernet(setup.float_model, space_choices(space), setup.spec)
    data = setup.data
    calibrate_all_bits(model, data.train.images[:64].float())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [(data.train.images[i : i + 32].float(), None) for i in range(0, 128, 32)]
    val = [(data.val.images.float(), data.val.labels)]
    score_policy(model, space.uniform(3), batches, 4, val, setup.runtime)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    stats = ("running_mean", "running_var", "num_batches_tracked")
    assert changed and all(k.endswith(stats) for k in changed)


def test_cli_train_then_search_and_the_errors_around_it(tmp_path: Path) -> None:
    missing = run_qsearch("search", "evaluator=supernet", "agent=random", cwd=tmp_path)
    assert missing.returncode == 2 and "train it first with `qsearch supernet" in missing.stderr
    assert not list(tmp_path.glob("outputs/search/*"))  # no run dir left
    trained = run_qsearch("supernet", "evaluator.epochs=2", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    [run] = tmp_path.glob("outputs/supernet/*")
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["history"]) == 2 and set(metrics["uniform_val_acc"]) == {
        "2",
        "3",
        "4",
        "5",
        "8",
    }
    assert (run / "model.pt").is_file() and (run / "curves.png").is_file()
    again = run_qsearch("supernet", "evaluator.epochs=2", cwd=tmp_path)
    assert "supernet found in cache" in again.stdout
    search = ("search", "evaluator=supernet", "agent=random", "budget.evaluations=6")
    found = run_qsearch(*search, cwd=tmp_path)
    assert found.returncode == 0, found.stderr
    [first] = tmp_path.glob("outputs/search/*")
    with open(first / "evaluations.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["reference"] == "False"]
    assert len(rows) == 6 and all(float(row["accuracy"]) > 50 for row in rows)
    subset = run_qsearch(*search, "search.w_bits=[2,4,8]", cwd=tmp_path)  # a superset serves
    assert subset.returncode == 0, subset.stderr
    other = run_qsearch(*search, "search.w_bits=[2,3,6]", cwd=tmp_path)
    assert other.returncode == 2 and "other bit choices" in other.stderr
    assert "qsearch supernet search.w_bits=[2,3,6]" in other.stderr
    tune = ("finetune", "w_bits=2", "a_bits=8", "finetune.epochs=1")
    started = run_qsearch(*tune, "finetune.init=supernet", cwd=tmp_path)  # the newest run
    assert started.returncode == 0, started.stderr
    [tuned] = tmp_path.glob("outputs/finetune/*")
    newest = max(tmp_path.glob("outputs/supernet/*/model.pt"))  # named by start time
    assert json.loads((tuned / "metrics.json").read_text())["init"] == str(newest.resolve())
    [float_file] = tmp_path.glob("cache/float/*/model.pt")
    wrong = run_qsearch(*tune, f"finetune.init={float_file}", cwd=tmp_path)
    assert wrong.returncode == 2 and "is not a qsearch supernet" in wrong.stderr


def test_scoring_re_estimates_batch_norm_on_batches_augmented_as_in_training(parts) -> None:
    """The weights were trained under augmented batch statistics: the scoring batches are
    augmented the same way (same seed: the same images, cropped and flipped)."""
    setup, _, model, _ = parts

    def first_bn_batch(augment: Augment | None) -> torch.Tensor:
        scoring = Scoring(bn_batches=2, val_subset=None, seed=0, augment=augment)
        evaluator = SupernetEvaluator(
            model, setup.float_model, setup.data, setup.runtime, scoring, cache=None
        )
        return next(iter(evaluator.bn_loader))[0]

    plain = first_bn_batch(None)
    assert torch.equal(plain, first_bn_batch(Augment()))  # no augmentation: same batch
    augmented = first_bn_batch(Augment(crop_padding=2, hflip=True))
    assert augmented.shape == plain.shape and not torch.equal(augmented, plain)

"""The HAWQ baseline: HAWQ-v2 weight and activation sensitivities, cached in the run dir, and
distinct candidates that spend the evaluation budget, the predicted optimum first."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import numpy as np
import pytest

from qsearch.agents import hawq
from qsearch.agents.hawq import HawqAgent, read_sensitivities
from qsearch.env.evaluator import EvalResult
from qsearch.env.optimum import LayerOptions
from qsearch.env.space import SearchSpace
from qsearch.env.synthetic import noise_power
from qsearch.models.inventory import LayerInfo
from qsearch.quant.policy import Policy
from tests.test_agents import _context
from tests.test_search_env import bitops_oracle

pytestmark = pytest.mark.filterwarnings("ignore:We recommend you to use a symmetric")

ACTIVATIONS = (
    "search.search_activations=true",
    "search.w_bits=[2,3,4,5,6,7,8]",
    "search.a_bits=[2,3,4,5,6,7,8]",
)


def _fast(agent: HawqAgent) -> HawqAgent:
    agent.hutchinson_samples, agent.batch_size = 4, 64
    return agent


def test_hawq_sensitivity_orders_bits(tmp_path: Path) -> None:
    ctx, search_agent = _context("hawq", tmp_path, 6)
    omega, omega_a = search_agent.sensitivities(ctx)
    assert omega.shape == (len(ctx.space.searchable), len(ctx.space.w_choices))
    assert omega_a is None  # activations fixed: not measured
    assert (omega[:, 0] > omega[:, -1]).all()  # 2 bits perturb more than 8 bits
    assert (tmp_path / "hawq_sensitivity.json").is_file()


def test_activation_sensitivities_fall_with_bits_and_are_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx, agent = _context("hawq", tmp_path, 6, overrides=ACTIVATIONS)
    omega_w, omega_a = _fast(agent).sensitivities(ctx)
    assert omega_a is not None
    assert omega_a.shape == (len(ctx.space.searchable), len(ctx.space.a_choices))
    assert (omega_a > 0).all()
    assert (np.diff(omega_a, axis=1) < 0).all()  # each bit more, less perturbation
    saved = json.loads((tmp_path / "hawq_sensitivity.json").read_text())
    assert saved["a_bits"] == ctx.space.a_choices
    assert np.allclose(saved["omega_a"], omega_a) and np.allclose(saved["omega_w"], omega_w)

    def no_measuring(*args: object, **kwargs: object) -> None:
        raise AssertionError("a resumed search re-measured the sensitivities")

    monkeypatch.setattr(hawq, "activation_traces", no_measuring)
    monkeypatch.setattr(hawq, "hutchinson_traces", no_measuring)
    resumed, agent = _context("hawq", tmp_path, 6, resume=True, overrides=ACTIVATIONS)
    cached_w, cached_a = agent.sensitivities(resumed)
    assert np.array_equal(cached_w, omega_w) and np.array_equal(cached_a, omega_a)


def test_activation_trace_is_the_hessian_trace_of_a_quadratic() -> None:
    """``loss = CE`` of a linear layer's logits: the trace w.r.t. its input is known exactly
    for a model whose second layer sees ``x`` through a fixed linear map."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 5))
    images, labels = torch.randn(6, 4), torch.randint(0, 5, (6,))
    x = model[0](images).detach().requires_grad_()
    loss = nn.functional.cross_entropy(model[1](x), labels)
    (grad,) = torch.autograd.grad(loss, x, create_graph=True)
    exact = sum(
        float(torch.autograd.grad(grad.reshape(-1)[i], x, retain_graph=True)[0].reshape(-1)[i])
        for i in range(x.numel())
    )
    estimate = hawq.activation_traces(model, [(images, labels)], ["1"], samples=400, seed=0)
    assert estimate[0] == pytest.approx(exact, rel=0.15)


def test_hawq_spends_the_budget_on_distinct_feasible_policies(tmp_path: Path) -> None:
    ctx, agent = _context("hawq", tmp_path, 30, cost_fraction=0.3, overrides=ACTIVATIONS)
    _fast(agent).search(ctx)
    searched = ctx.recorder.searched()
    assert ctx.recorder.used == 30 and len(searched) == 30
    assert len({(tuple(e.w_bits), tuple(e.a_bits)) for e in searched}) == 30
    assert all(e.feasible for e in searched)
    assert ctx.recorder.episode == 30
    assert len({e.a_bits[i] for e in searched for i in ctx.space.searchable}) > 1


def test_hawq_resumes_where_it_stopped(tmp_path: Path) -> None:
    ctx, agent = _context("hawq", tmp_path, 10, cost_fraction=0.3, overrides=ACTIVATIONS)
    _fast(agent).search(ctx)
    first = [e.w_bits + e.a_bits for e in ctx.recorder.searched()]
    resumed, agent = _context(
        "hawq", tmp_path, 16, resume=True, cost_fraction=0.3, overrides=ACTIVATIONS
    )
    _fast(agent).search(resumed)
    assert resumed.recorder.used == 16 and resumed.recorder.episode == 16
    assert [e.w_bits + e.a_bits for e in resumed.recorder.searched()][:10] == first


class AdditiveTruth:
    """Accuracy = 99 - the summed known sensitivities of the policy's searched bits."""

    def __init__(self, space: SearchSpace, omega_w: np.ndarray, omega_a: np.ndarray) -> None:
        self.space, self.omega_w, self.omega_a = space, omega_w, omega_a

    def loss(self, w_bits: list[int], a_bits: list[int]) -> float:
        return sum(
            self.omega_w[row, self.space.w_choices.index(w)]
            + self.omega_a[row, self.space.a_choices.index(a)]
            for row, (w, a) in enumerate(zip(w_bits, a_bits, strict=True))
        )

    def __call__(self, policy: Policy) -> EvalResult:
        return EvalResult(99.0 - self.loss(*self.space.searched_bits(policy)), 0.0, cached=False)


def test_first_candidate_is_the_knapsack_optimum_of_known_sensitivities(tmp_path: Path) -> None:
    """Three searched layers, W/A in {2, 4, 8}: brute force over all 729 policies."""
    overrides = ("search.search_activations=true", "search.w_bits=[2,4,8]", "search.a_bits=[2,4,8]")
    ctx, agent = _context("hawq", tmp_path, 12, cost_fraction=0.3, overrides=overrides)
    space = ctx.space
    rng = np.random.default_rng(1)
    omega_w = np.outer(10 ** rng.uniform(0, 3, 3), noise_power(np.array(space.w_choices)))
    omega_a = np.outer(10 ** rng.uniform(0, 3, 3), noise_power(np.array(space.a_choices)))
    truth = AdditiveTruth(space, omega_w, omega_a)
    ctx.recorder.evaluator = truth
    ctx.sensitivities = lambda: (omega_w, omega_a)
    ctx.float_model, ctx.data = None, None  # as under the synthetic evaluator
    agent.search(ctx)
    options = list(itertools.product(space.w_choices, space.a_choices))
    feasible = []
    for combo in itertools.product(options, repeat=3):
        w_bits, a_bits = [o[0] for o in combo], [o[1] for o in combo]
        if space.feasible(space.policy(w_bits, a_bits)):
            feasible.append((truth.loss(w_bits, a_bits), w_bits, a_bits))
    best_loss, best_w, best_a = min(feasible)
    first = ctx.recorder.searched()[0]
    assert space.searched_bits(space.policy(*_bits(space, first))) == (best_w, best_a)
    assert ctx.recorder.best.accuracy == pytest.approx(99.0 - best_loss)
    assert ctx.recorder.used == 12
    assert not (tmp_path / "hawq_sensitivity.json").exists()  # the estimate is not measured


def _bits(space: SearchSpace, evaluation: object) -> tuple[list[int], list[int]]:
    w, a = evaluation.w_bits, evaluation.a_bits  # type: ignore[attr-defined]
    return [w[i] for i in space.searchable], [a[i] for i in space.searchable]


def _layer(index: int, name: str, macs: int) -> LayerInfo:
    return LayerInfo(index, name, "conv", 1, 1, (1, 1), 1, 1, (1, 1), (1, 1), 1, 0, macs)


def test_hand_checked_two_layer_knapsack() -> None:
    """Two searched layers, 2/8-bit weights, fixed 8-bit activations, MACs 100 and 10
    (BitOPs = MACs x w x 8): budget 100*2*8 + 10*8*8 + pinned fits W2 on the big layer only
    with W8 on the small one. Predicted losses: big W2 costs 1, small W2 costs 5, so W2/W8
    (loss 1) ranks before W2/W2 (loss 6); W8/W2 and W8/W8 are over budget."""
    names_macs = (("first", 1), ("big", 100), ("small", 10), ("last", 1))
    inventory = [_layer(i, name, macs) for i, (name, macs) in enumerate(names_macs)]
    space = SearchSpace(
        "toy", "toy", inventory, [2, 8], [8], bitops_oracle(inventory), pin_first_last=8
    )
    space.budget = 2 * 64 + 100 * 2 * 8 + 10 * 8 * 8
    table = LayerOptions.of(space)
    omega_w = np.array([[1.0, 0.0], [5.0, 0.0]])
    agent = HawqAgent()
    sens_w, sens_a = hawq._option_sensitivities(space, table, omega_w, None)
    ranked = agent.candidates(space, table, sens_w, sens_a, target=10)
    assert [[table.options[k][0] for k in choice] for choice in ranked] == [[2, 8], [2, 2]]


def test_candidates_for_a_large_space_take_seconds() -> None:
    """52 searched layers x 49 options, 500 evaluations: distinct, feasible, quick."""
    rng = np.random.default_rng(0)
    inventory = [_layer(i, f"l{i}", int(rng.integers(10**4, 10**7))) for i in range(54)]
    bits = [2, 3, 4, 5, 6, 7, 8]
    space = SearchSpace(
        "big", "toy", inventory, bits, bits, bitops_oracle(inventory), search_activations=True
    )
    space.budget = 0.2 * space.cost.total(space.uniform(8))
    table = LayerOptions.of(space)
    omega_w = np.outer(10 ** rng.uniform(0, 3, 52), noise_power(np.array(bits)))
    omega_a = np.outer(10 ** rng.uniform(0, 3, 52), noise_power(np.array(bits)))
    sens_w, sens_a = hawq._option_sensitivities(space, table, omega_w, omega_a)
    started = time.perf_counter()
    ranked = HawqAgent().candidates(space, table, sens_w, sens_a, target=500)
    assert time.perf_counter() - started < 60  # seconds on one core; minutes would fail
    assert len(ranked) >= 500 and len(set(ranked)) == len(ranked)
    assert all(table.policy_cost(list(c)) <= space.budget * (1 + 1e-9) for c in ranked)


def test_read_sensitivities_refuses_a_file_of_another_space(tmp_path: Path) -> None:
    ctx, _ = _context("hawq", tmp_path, 6, overrides=ACTIVATIONS)
    path = tmp_path / "hawq_sensitivity.json"
    path.write_text(json.dumps({"omega": [[1.0, 0.5]] * 3}))  # the old format, 2 w choices
    assert read_sensitivities(path, ctx.space) is None

"""The exact multiple-choice knapsack (``solve_mckp``) against brute force, and the per-layer
option costs (``LayerOptions.of``) against BitOPs worked out by hand for lenet5."""

from __future__ import annotations

import ctypes
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qsearch.env.optimum import LayerOptions, _native_stdout_discarded, solve_mckp
from tests.test_search_env import INVENTORY, make_space

LENET_MACS = [117600, 240000, 48000, 10080, 840]  # conv1, conv2, fc1, fc2, fc3


def _brute_force(values: np.ndarray, costs: np.ndarray, budget: float) -> float | None:
    """The best total value within ``budget`` over every combination (None: none fits)."""
    best = None
    rows = np.arange(values.shape[0])
    for choice in itertools.product(range(values.shape[1]), repeat=values.shape[0]):
        if costs[rows, choice].sum() <= budget:
            total = float(values[rows, choice].sum())
            best = total if best is None else max(best, total)
    return best


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), choices=st.integers(2, 6), slack=st.floats(0.0, 1.0))
def test_solve_mckp_matches_brute_force(seed: int, choices: int, slack: float) -> None:
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(4, choices))
    costs = rng.uniform(1.0, 10.0, size=(4, choices))
    low, high = costs.min(axis=1).sum(), costs.max(axis=1).sum()
    budget = low + slack * (high - low)
    choice = solve_mckp(values, costs, budget)
    rows = np.arange(4)
    assert len(choice) == 4 and all(0 <= k < choices for k in choice)
    assert costs[rows, choice].sum() <= budget * (1 + 1e-9)
    expected = _brute_force(values, costs, budget * (1 + 1e-9))
    assert expected is not None
    assert values[rows, choice].sum() == pytest.approx(expected, abs=1e-9)


def test_solve_mckp_tight_budget_and_ties() -> None:
    values = np.array([[0.0, 1.0], [0.0, 1.0]])
    costs = np.array([[1.0, 2.0], [1.0, 3.0]])
    assert solve_mckp(values, costs, 2.0) == [0, 0]  # only the cheapest fits
    assert solve_mckp(values, costs, 3.0) == [1, 0]  # one upgrade fits: the cheaper one
    assert solve_mckp(values, costs, 5.0) == [1, 1]


def test_solve_mckp_refuses_an_infeasible_budget() -> None:
    costs = np.array([[2.0, 3.0], [1.0, 4.0]])
    with pytest.raises(ValueError, match="no choice fits the budget"):
        solve_mckp(np.zeros((2, 2)), costs, 2.9)


@pytest.mark.parametrize("search_activations", [True, False])
def test_layer_options_cost_bitops_of_lenet5(search_activations: bool) -> None:
    assert [layer.macs for layer in INVENTORY] == LENET_MACS
    space = make_space(search_activations=search_activations)  # first and last at W8A8
    table = LayerOptions.of(space)
    a_bits = [2, 4, 8] if search_activations else [8]
    assert table.options == [(w, a) for w in [2, 3, 4, 5, 8] for a in a_bits]
    for k, (w, a) in enumerate(table.options):
        assert table.cost[:, k].tolist() == [240000 * w * a, 48000 * w * a, 10080 * w * a]
    assert table.fixed_cost == (117600 + 840) * 8 * 8
    choice = [0, len(table.options) - 1, 3]
    picked = [table.options[k] for k in choice]
    policy = space.policy([w for w, _ in picked], [a for _, a in picked])
    assert table.policy_cost(choice) == pytest.approx(space.cost.total(policy))


def _brute_force_ranked(values: np.ndarray, costs: np.ndarray, budget: float) -> list[float]:
    """Every fitting combination's total value, best first."""
    rows = np.arange(values.shape[0])
    totals = [
        float(values[rows, choice].sum())
        for choice in itertools.product(range(values.shape[1]), repeat=values.shape[0])
        if costs[rows, choice].sum() <= budget
    ]
    return sorted(totals, reverse=True)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), cut=st.integers(1, 4))
def test_solve_mckp_excluded_choices_give_the_next_best(seed: int, cut: int) -> None:
    """Cutting off the optimum ``cut`` times in a row walks down the brute-force ranking."""
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(3, 4))
    costs = rng.uniform(1.0, 10.0, size=(3, 4))
    budget = costs.min(axis=1).sum() + 0.6 * (costs.max(axis=1).sum() - costs.min(axis=1).sum())
    ranked = _brute_force_ranked(values, costs, budget * (1 + 1e-9))
    rows, exclude = np.arange(3), []
    for rank in range(min(cut, len(ranked))):
        choice = solve_mckp(values, costs, budget, exclude)
        assert choice not in exclude
        assert values[rows, choice].sum() == pytest.approx(ranked[rank], abs=1e-9)
        exclude.append(choice)


def test_solve_mckp_with_everything_excluded_raises() -> None:
    values, costs = np.zeros((1, 2)), np.array([[1.0, 5.0]])
    assert solve_mckp(values, costs, 2.0) == [0]
    with pytest.raises(ValueError, match="solver failed"):
        solve_mckp(values, costs, 2.0, exclude=[[0]])  # the only fitting choice is cut


def test_native_stdout_is_discarded_only_while_solving(capfd: pytest.CaptureFixture[str]) -> None:
    """HiGHS's stray C++ print is dropped at the file descriptor; Python output around it
    and native output after it still come through."""
    libc = ctypes.CDLL(None)
    print("before", flush=True)
    with _native_stdout_discarded():
        libc.printf(b"HighsMipSolverData::transformNewIntegerFeasibleSolution\n")
    libc.printf(b"native after\n")
    libc.fflush(None)
    print("after", flush=True)
    out = capfd.readouterr().out
    assert "HighsMipSolverData" not in out
    assert out.split() == ["before", "native", "after", "after"]

"""Proxy fidelity: rank agreement against hand-computed values, a known tau, policy sets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qsearch.env.fidelity import fidelity, policy_set, top_k_recall
from tests.test_search_env import make_space


def test_fidelity_of_one_swapped_pair_by_hand() -> None:
    # 6 pairs, one discordant: tau = (5 - 1) / 6; rho = 1 - 6 * (0 + 1 + 1 + 0) / (4 * 15)
    result = fidelity([1.0, 2.0, 3.0, 4.0], [10.0, 30.0, 20.0, 40.0])
    assert result.kendall_tau == pytest.approx(4 / 6)
    assert result.spearman == pytest.approx(0.8)
    assert result.policies == 4


def test_fidelity_extremes_and_a_constant_proxy() -> None:
    truth = [float(i) for i in range(8)]
    assert fidelity(truth, truth).kendall_tau == pytest.approx(1.0)
    assert fidelity(truth, truth[::-1]).kendall_tau == pytest.approx(-1.0)
    assert fidelity(truth, [5.0] * 8).kendall_tau == 0.0  # no ranking at all


def test_top_k_recall_by_hand() -> None:
    truth = [5.0, 4.0, 3.0, 2.0, 1.0, 0.0]  # best two: positions 0, 1
    assert top_k_recall(truth, [0.0, 4.0, 3.0, 2.0, 1.0, 5.0], k=2) == 0.5  # proxy: 5, 1
    assert top_k_recall(truth, truth, k=5) == 1.0
    assert top_k_recall(truth[:3], truth[:3], k=5) == 1.0  # k capped at the set size


def test_fidelity_rejects_mismatched_or_tiny_sets() -> None:
    with pytest.raises(ValueError, match="3 ground-truth scores but 2"):
        fidelity([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="at least 3 policies"):
        fidelity([1.0, 2.0], [1.0, 2.0])


@settings(max_examples=60, deadline=None)
@given(st.permutations(list(range(9))))
def test_kendall_tau_counts_inversions(order: list[int]) -> None:
    """Without ties, tau = 1 - 4 * inversions / (n (n - 1)): a set with a known tau."""
    n = len(order)
    inversions = sum(order[i] > order[j] for i in range(n) for j in range(i + 1, n))
    result = fidelity([float(i) for i in range(n)], [float(v) for v in order])
    assert result.kendall_tau == pytest.approx(1 - 4 * inversions / (n * (n - 1)))


def test_policy_set_covers_the_cost_range_with_distinct_policies() -> None:
    space = make_space(search_activations=True)
    n = len(space.searchable)  # w in {2, 3, 4, 5, 8}, a in {2, 4, 8}
    low = space.cost.total(space.policy([2] * n, [2] * n))
    high = space.cost.total(space.policy([5] * n, [4] * n))
    policies = policy_set(space, 6, low, high, seed=0)
    assert len({p.key() for p in policies}) == 6
    width = (high - low) / 6
    for i, policy in enumerate(policies):  # one per slice, in order
        cost = space.cost.total(policy)
        assert low + i * width - 1e-6 <= cost <= low + (i + 1) * width + 1e-6
    assert space.budget is None  # the space is left as it was
    again = policy_set(space, 6, low, high, seed=0)
    assert [p.key() for p in again] == [p.key() for p in policies]  # seeded

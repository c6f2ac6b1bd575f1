"""The synthetic landscape (``evaluator=synthetic``): its formula, its exact optimum against
brute force, its noise, and every agent near the optimum of an easy landscape."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from qsearch.config import group_options
from qsearch.env.synthetic import SyntheticConfig, SyntheticLandscape, noise_power
from qsearch.errors import UserError
from tests.test_search_env import make_space

pytestmark = pytest.mark.filterwarnings("ignore:We recommend you to use a symmetric")


def _space(fraction: float | None = 0.5, **kwargs: object):  # lenet5: 3 searched layers
    space = make_space(
        **({"w_choices": [2, 4, 8], "a_choices": [2, 8], "search_activations": True} | kwargs)
    )
    if fraction is not None:
        space.budget = fraction * space.cost.total(space.uniform(8))
    return space


def test_accuracy_follows_the_formula_and_the_3bit_drop() -> None:
    space = _space(w_choices=[2, 3, 4, 8], a_choices=[3, 8])
    landscape = SyntheticLandscape(space, SyntheticConfig(drop_at_3bit=4.0, float_accuracy=80))
    assert landscape.true_accuracy(space.policy([3] * 3, [3] * 3)) == pytest.approx(76.0)
    s, r = landscape.s, landscape.r
    assert s.sum() == pytest.approx(r.sum())  # activation_share 0.5
    policy = space.policy([2, 4, 8], [3, 8, 8])
    expected = 80 - (s[0] / 16 + s[1] / 256 + s[2] / 4**8 + r[0] / 64 + (r[1] + r[2]) / 4**8)
    assert landscape.true_accuracy(policy) == pytest.approx(expected)
    spread = np.log10(s.max() / s.min())
    assert 0 < spread <= 2.5


def test_weights_carry_the_whole_loss_when_activations_are_fixed() -> None:
    space = _space(search_activations=False, fixed_a_bits=8)
    landscape = SyntheticLandscape(space, SyntheticConfig())
    assert landscape.r.sum() == 0
    assert landscape.true_accuracy(space.policy([8, 8, 8])) == pytest.approx(
        90 - landscape.s.sum() * noise_power(8)
    )


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("fraction", [0.45, 0.6, 0.8])
def test_optimum_matches_brute_force(seed: int, fraction: float) -> None:
    space = _space(fraction)
    landscape = SyntheticLandscape(space, SyntheticConfig(landscape_seed=seed))
    options = [(w, a) for w in space.w_choices for a in space.a_choices]
    feasible = []
    for combo in itertools.product(options, repeat=3):
        policy = space.policy([w for w, _ in combo], [a for _, a in combo])
        if space.feasible(policy):
            feasible.append(landscape.true_accuracy(policy))
    optimum, policy = landscape.optimum()
    assert optimum == pytest.approx(max(feasible))
    assert space.feasible(policy) and landscape.regret(policy) == pytest.approx(0.0)


def test_noise_is_fixed_per_policy_with_the_configured_spread() -> None:
    space = _space(w_choices=[2, 3, 4, 5, 6, 7, 8], a_choices=[2, 3, 4, 5, 6, 7, 8])
    landscape = SyntheticLandscape(space, SyntheticConfig(noise_std=0.5))
    options = list(itertools.product(space.w_choices, space.a_choices))
    errors = []
    for combo in list(itertools.product(options, repeat=2))[:2000]:
        policy = space.policy([combo[0][0], combo[1][0], 8], [combo[0][1], combo[1][1], 8])
        observed = landscape(policy).accuracy
        assert landscape(policy).accuracy == observed  # the same policy, the same score
        errors.append(observed - landscape.true_accuracy(policy))
    assert np.std(errors) == pytest.approx(0.5, rel=0.1) and abs(np.mean(errors)) < 0.05


def test_estimate_for_hawq_is_exact_without_error() -> None:
    space = _space()
    landscape = SyntheticLandscape(space, SyntheticConfig(estimate_error=0.0))
    omega_w, omega_a = landscape.estimate(seed=3)
    assert omega_w.shape == (3, 3) and omega_a.shape == (3, 2)
    assert omega_w[:, 0] == pytest.approx(landscape.s / 16)
    noisy_w, _ = SyntheticLandscape(space, SyntheticConfig(estimate_error=0.5)).estimate(3)
    assert not np.allclose(noisy_w, omega_w)


def test_bad_settings_and_missing_budget_are_user_errors() -> None:
    with pytest.raises(UserError, match="needs a cost budget"):
        SyntheticLandscape(_space(None), SyntheticConfig()).optimum()
    with pytest.raises(UserError, match="drop_at_3bit must be > 0"):
        SyntheticConfig.from_config({"drop_at_3bit": 0})
    with pytest.raises(UserError, match="unknown evaluator option"):
        SyntheticConfig.from_config({"steps": 5})


@pytest.mark.parametrize("agent", [a for a in group_options("agent") if a != "uniform"])
def test_every_agent_gets_near_the_optimum_of_an_easy_landscape(agent: str, tmp_path: Path) -> None:
    """Three searched layers, 2/4/8-bit weights at fixed 8-bit activations (27 policies),
    half the 8-bit cost: each agent ends within 1 point of the optimum in 20 evaluations."""
    from tests.test_agents import _context

    ctx, search_agent = _context(agent, tmp_path, 20, cost_fraction=0.5, synthetic=True)
    ctx.max_episodes = 60  # the RL agents repeat known policies for free once they converge
    search_agent.search(ctx)
    landscape = ctx.recorder.evaluator
    best = ctx.recorder.best_policy()
    assert best is not None and ctx.space.feasible(best)
    assert landscape.regret(best) < 1.0

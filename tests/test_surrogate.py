"""Model-based search (``agent.imagined_episodes``): the additive noise model's fit, Dyna's
schedule, and imagined episodes in both envs (scored by the model, never charged)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from qsearch.agents._sb3 import imagination
from qsearch.agents.landscape import search_landscape
from qsearch.env.quant_env import HaqEnv, ReleqEnv
from qsearch.env.rewards import HaqReward, ReleqReward
from qsearch.env.surrogate import AdditiveSurrogate, Imagination, ModelProposals
from qsearch.env.synthetic import SyntheticConfig, SyntheticLandscape, noise_power
from qsearch.errors import UserError
from tests.test_agents import _context
from tests.test_search_env import make_recorder, make_space

BITS = [2, 3, 4, 5, 6, 7, 8]


def _space(budget: float | None = 0.4):  # lenet5: 3 searched layers, W and A in 2..8
    space = make_space(w_choices=BITS, a_choices=BITS, search_activations=True)
    if budget is not None:
        space.budget = budget * space.cost.total(space.uniform(8))
    return space


def _random_policy(space, rng: np.random.Generator):
    n = len(space.searchable)
    return space.policy(list(rng.choice(BITS, n)), list(rng.choice(BITS, n)))


def test_fit_recovers_an_additive_noise_model_exactly() -> None:
    space = _space(None)
    alpha, beta = np.array([300.0, 5.0, 40.0]), np.array([0.0, 80.0, 12.0])

    def accuracy(policy) -> float:
        w, a = space.searched_bits(policy)
        return 95.0 - alpha @ noise_power(np.array(w)) - beta @ noise_power(np.array(a))

    model = AdditiveSurrogate(space, ridge=0.0)
    rng = np.random.default_rng(0)
    for _ in range(40):
        policy = _random_policy(space, rng)
        model.add(policy, accuracy(policy))
    model.fit()
    np.testing.assert_allclose(model.alpha, alpha, atol=1e-6)
    np.testing.assert_allclose(model.beta, beta, atol=1e-6)
    assert model.intercept == pytest.approx(95.0)
    policy = space.policy([2, 2, 2], [2, 2, 2])
    assert model.predict(policy) == pytest.approx(95 - (alpha.sum() + beta.sum()) / 16)


def test_sensitivities_stay_non_negative_and_repeats_count_once() -> None:
    space = _space(None)
    model = AdditiveSurrogate(space)
    rng = np.random.default_rng(1)
    for _ in range(12):  # accuracy that rises as bits fall: the fit must not follow it
        policy = _random_policy(space, rng)
        w, a = space.searched_bits(policy)
        model.add(policy, 90.0 + 10 * float(noise_power(np.array(w + a)).sum()))
    model.add(policy, 0.0)  # the same policy again replaces, not adds
    assert len(model) == 12
    model.fit()
    assert (model.alpha >= 0).all() and (model.beta >= 0).all()


def test_imagination_starts_after_enough_evaluations_then_alternates() -> None:
    space = _space()
    plan = Imagination(AdditiveSurrogate(space), episodes=2, after=3)
    policy = space.uniform(8)
    seen = []
    for step in range(5):
        plan.observe(space.policy([8 - step] * 3, [8] * 3), 90.0 - step)
        seen.append([plan.next_is_imagined() for _ in range(3)])
    assert seen[:2] == [[False] * 3] * 2  # 1, then 2 evaluations: no model yet
    assert seen[2:] == [[True, True, False]] * 3
    assert plan.imagined == 6
    assert plan.predict(policy) == pytest.approx(plan.surrogate.predict(policy))
    assert not Imagination(AdditiveSurrogate(space), episodes=0).active


def _imagining(space, after: int = 1, episodes: int = 3) -> Imagination:
    return Imagination(AdditiveSurrogate(space), episodes=episodes, after=after)


@pytest.mark.filterwarnings("ignore:We recommend you to use a symmetric")
def test_haq_env_imagined_episodes_are_scored_by_the_model_and_not_charged(
    tmp_path: Path,
) -> None:
    space = _space()
    recorder = make_recorder(space, tmp_path, budget=100)
    plan = _imagining(space)
    env = HaqEnv(space, recorder, HaqReward(baseline_alpha=None), 99.0, plan)

    def episode(value: float) -> tuple[float, dict]:
        env.reset(seed=0)
        for _ in range(len(env.plan)):
            _, reward, done, _, info = env.step(np.array([value], np.float32))
        assert done
        return reward, info

    reward, info = episode(0.5)  # real: evaluated, then the model is fitted
    assert recorder.used == 1 and recorder.episode == 1 and "accuracy" in info
    proposals = space.projection.proposals
    for value in (0.1, 0.9, 0.3):
        reward, info = episode(value)
        assert reward == pytest.approx(0.1 * (info["imagined"] - 99.0))
    assert recorder.used == 1 and recorder.episode == 1  # three imagined episodes: free
    assert space.projection.proposals == proposals  # and left out of the projection stats
    assert plan.surrogate.seen and plan.imagined == 3
    episode(0.0)  # every tensor at 2 bits: a new policy
    assert recorder.used == 2 and recorder.episode == 2


def test_releq_env_imagines_only_under_a_budget(tmp_path: Path) -> None:
    space = _space()
    recorder = make_recorder(space, tmp_path, budget=100)
    env = ReleqEnv(space, recorder, ReleqReward(), 99.0, [0.1] * 5, imagination=_imagining(space))
    # one real episode (fits the model), three imagined, one real: each a different policy
    for index, expected_used in zip((6, 5, 4, 3, 0), (1, 1, 1, 1, 2), strict=True):
        env.reset(seed=0)
        for _ in range(env.layers):
            _, reward, done, _, info = env.step(np.array([index, index]))
        assert done and recorder.used == expected_used
        if "imagined" in info:
            assert reward == pytest.approx(ReleqReward().accuracy_term(info["imagined"] / 99))
    assert recorder.episode == 2
    unbudgeted = _space(None)
    (tmp_path / "free").mkdir()
    env = ReleqEnv(
        unbudgeted, make_recorder(unbudgeted, tmp_path / "free"), ReleqReward(), 99.0,
        [0.1] * 5, imagination=_imagining(unbudgeted),
    )  # fmt: skip
    assert env.imagination is None  # rewards after every step: nothing to imagine


def test_a_resumed_search_refits_the_model_on_its_evaluations(tmp_path: Path) -> None:
    ctx, _ = _context("releq", tmp_path, budget=20, synthetic=True, cost_fraction=0.5)
    space = ctx.space
    for bits in ([2, 4, 8], [4, 4, 4], [8, 2, 2]):
        ctx.recorder.evaluate(space.policy(bits))
    plan = imagination(ctx, episodes=4, after=2)
    assert plan is not None and len(plan.surrogate) == 3
    assert imagination(ctx, episodes=0, after=2) is None


def test_synthetic_noise_base_sets_the_law() -> None:
    space = _space()
    landscape = SyntheticLandscape(space, SyntheticConfig(noise_base=2.0, drop_at_3bit=4.0))
    assert landscape.true_accuracy(space.policy([3] * 3, [3] * 3)) == pytest.approx(86.0)
    s, r = landscape.s, landscape.r
    policy = space.policy([2, 3, 8], [4, 8, 8])
    expected = 90 - (s[0] / 4 + s[1] / 8 + s[2] / 256 + r[0] / 16 + (r[1] + r[2]) / 256)
    assert landscape.true_accuracy(policy) == pytest.approx(expected)
    with pytest.raises(UserError, match="noise_base must be > 1"):
        SyntheticConfig.from_config({"noise_base": 1.0})


def _additive_landscape(space) -> SyntheticLandscape:
    return SyntheticLandscape(space, SyntheticConfig(drop_at_3bit=6.0, landscape_seed=3))


def test_model_proposals_follow_the_schedule_and_find_the_optimum(tmp_path: Path) -> None:
    """On a landscape that obeys the model's law, after ``after`` random evaluations every
    ``every``-th one is the model's, logged as agent "model", and one of them is the exact
    optimum under the budget."""
    space = _space()
    landscape = _additive_landscape(space)
    proposals = ModelProposals(space, every=3, after=12)
    recorder = make_recorder(space, tmp_path, budget=40, evaluator=landscape)
    recorder.proposer = proposals
    rng = np.random.default_rng(0)
    while not recorder.exhausted:
        recorder.evaluate(space.enforce_budget(_random_policy(space, rng)))
    with open(tmp_path / "evaluations.csv", newline="") as handle:
        agents = [row["agent"] for row in csv.DictReader(handle)]
    model_rows = [i for i, agent in enumerate(agents) if agent == "model"]
    assert model_rows and model_rows[0] == 12  # the 12th charged evaluation triggers the first
    assert all(i % 3 == 0 for i in model_rows)  # then every 3rd charged count
    assert len(agents) == 40 == recorder.used  # proposals are charged, the budget holds
    optimum_accuracy, optimum = landscape.optimum()
    assert optimum.key() in recorder.seen
    assert recorder.best is not None and recorder.best.accuracy == pytest.approx(optimum_accuracy)


def test_model_proposals_skip_evaluated_policies_and_need_a_budget(tmp_path: Path) -> None:
    space = _space()
    landscape = _additive_landscape(space)
    recorder = make_recorder(space, tmp_path, budget=100, evaluator=landscape)
    rng = np.random.default_rng(1)
    for _ in range(20):
        recorder.evaluate(space.enforce_budget(_random_policy(space, rng)))
    proposals = ModelProposals(space, every=1, after=1)
    first = proposals(recorder)
    assert first is not None and first.key() not in recorder.seen and space.feasible(first)
    recorder.evaluate(first)
    second = proposals(recorder)
    assert second is not None and second.key() not in recorder.seen
    assert ModelProposals(_space(None), every=1, after=1)(recorder) is None  # no budget
    assert ModelProposals(space, every=0, after=1)(recorder) is None  # off
    assert ModelProposals(space, every=1, after=1000)(recorder) is None  # too few yet


def test_a_proposal_is_not_made_once_the_budget_is_spent(tmp_path: Path) -> None:
    space = _space()
    calls = []

    def proposer(recorder):
        calls.append(recorder.used)
        return None

    recorder = make_recorder(space, tmp_path, budget=2, evaluator=_additive_landscape(space))
    recorder.proposer = proposer
    recorder.evaluate(space.policy([8, 8, 8], [8, 8, 8]))
    recorder.evaluate(space.policy([4, 4, 4], [4, 4, 4]))
    recorder.evaluate(space.policy([8, 8, 8], [8, 8, 8]))  # cached: no proposal either
    assert calls == [1]


def test_a_resumed_search_knows_which_evaluations_the_model_proposed(tmp_path: Path) -> None:
    space = _space()
    landscape = _additive_landscape(space)
    recorder = make_recorder(space, tmp_path, budget=20, evaluator=landscape)
    recorder.proposer = ModelProposals(space, every=2, after=6)
    rng = np.random.default_rng(2)
    while not recorder.exhausted:
        recorder.evaluate(space.enforce_budget(_random_policy(space, rng)))
    flags = [e.by_model for e in recorder.searched()]
    assert any(flags) and not all(flags)
    resumed = make_recorder(space, tmp_path, budget=20, evaluator=landscape, resume=True)
    assert [e.by_model for e in resumed.searched()] == flags


def test_the_model_spends_what_a_stopped_agent_left(tmp_path: Path) -> None:
    """An agent that stops with budget left (a converged RL agent): the model proposes new
    feasible policies, regardless of its cadence, until the budget is spent; the recorder
    remembers where the agent stopped. Without a proposer nothing more is evaluated."""
    space = _space()
    landscape = _additive_landscape(space)
    recorder = make_recorder(space, tmp_path, budget=40, evaluator=landscape)
    recorder.proposer = ModelProposals(space, every=7, after=12)
    rng = np.random.default_rng(3)
    while recorder.used < 15:  # the agent's 15 (two of them the model's, at 12 and 14)
        recorder.evaluate(space.enforce_budget(_random_policy(space, rng)))
    recorder.end_episode(space.uniform(8), 0.0, 1)  # the episode of those 15
    for _ in range(3):  # three more, each ending at a policy already evaluated
        recorder.end_episode(space.uniform(8), 0.0, 1)
    assert recorder.stale_episodes == 3
    assert recorder.spend_rest_on_proposer() == 40 - 15
    assert recorder.agent_stopped_at == 15 and recorder.exhausted
    assert recorder.stale_when_stopped == 3  # for the log: why the agent stopped
    rest = recorder.searched()[15:]
    assert all(e.by_model and e.feasible for e in rest)
    assert len({(tuple(e.w_bits), tuple(e.a_bits)) for e in recorder.searched()}) == 40
    assert recorder.spend_rest_on_proposer() == 0  # nothing left to spend

    (tmp_path / "alone").mkdir()
    alone = make_recorder(space, tmp_path / "alone", budget=40, evaluator=landscape)
    alone.evaluate(space.policy([8, 8, 8], [8, 8, 8]))
    assert alone.spend_rest_on_proposer() == 0
    assert alone.agent_stopped_at == 1 and alone.used == 1


LANDSCAPE = [
    "model=resnet20",
    "dataset=cifar10",
    "search.search_activations=true",
    "search.w_bits=[2,3,4,5,6,7,8]",
    "search.a_bits=[2,3,4,5,6,7,8]",
    "budget.evaluations=40",
    "search.model_after=5",
]


def test_a_search_whose_agent_stops_early_spends_its_budget_on_the_model(
    tmp_path: Path,
) -> None:
    """Random search capped at 3 episodes after the uniform start: the model proposes the
    rest of the 40 evaluations, so the search ends at the budget."""
    run = search_landscape(["agent=random", "seed=0", *LANDSCAPE], tmp_path, max_episodes=3)
    recorder = run.recorder
    assert recorder.used == 40
    stopped = recorder.agent_stopped_at
    assert stopped is not None and stopped < 40
    assert all(e.by_model for e in recorder.searched()[stopped:])


def test_the_uniform_agent_gets_no_model_proposals(tmp_path: Path) -> None:
    run = search_landscape(["agent=uniform", "seed=0", *LANDSCAPE], tmp_path)
    searched = run.recorder.searched()
    assert searched and not any(e.by_model for e in searched)
    assert all(len(set(e.w_bits[1:-1])) == len(set(e.a_bits[1:-1])) == 1 for e in searched)

"""The search machinery on a fake evaluator: space, budget projection, rewards, recorder,
the two gymnasium envs (gymnasium's and SB3's env checkers) and every agent."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from hypothesis import given, settings
from hypothesis import strategies as st
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from qsearch.env.evaluator import EvalResult
from qsearch.env.quant_env import HaqEnv, ReleqEnv, action_to_bits
from qsearch.env.recorder import BudgetExhausted, Objective, SearchRecorder
from qsearch.env.rewards import HaqReward, ReleqReward, releq_reward
from qsearch.env.space import CostOracle, ProjectionStats, SearchSpace, parse_uniform
from qsearch.errors import UserError
from qsearch.models.inventory import LayerInfo, layer_inventory
from qsearch.models.lenet import LeNet5
from qsearch.quant.policy import Policy

INVENTORY = layer_inventory(LeNet5(), (1, 28, 28))  # MACs 117600, 240000, 48000, 10080, 840


def bitops_oracle(inventory: list[LayerInfo] = INVENTORY) -> CostOracle:
    """BitOPs (MACs x w_bits x a_bits), computed independently of qsearch.hardware."""

    def per_layer(policy: Policy) -> list[float]:
        return [
            layer.macs * policy.layers[layer.name].w_bits * policy.layers[layer.name].a_bits
            for layer in inventory
        ]

    return CostOracle("bitops", per_layer, lambda p: {"bitops": float(sum(per_layer(p)))})


def make_space(**kwargs: object) -> SearchSpace:
    args = {"w_choices": [2, 3, 4, 5, 8], "a_choices": [2, 4, 8]} | kwargs
    return SearchSpace(
        model="lenet5", dataset="mnist", inventory=INVENTORY, cost=bitops_oracle(), **args
    )  # type: ignore[arg-type]


class FakeEvaluator:
    """Accuracy falls as bits fall: 99 - sum over layers of 8 / bits (deterministic)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, policy: Policy) -> EvalResult:
        self.calls += 1
        penalty = sum(2.0 / b for b in policy.w_bits) + sum(1.0 / b for b in policy.a_bits)
        return EvalResult(accuracy=99.0 - penalty, seconds=0.0, cached=False)


def make_recorder(
    space: SearchSpace,
    tmp_path: Path,
    budget: int = 50,
    resume: bool = False,
    evaluator: FakeEvaluator | None = None,
) -> SearchRecorder:
    objective = Objective(space, float_accuracy=99.0, releq=ReleqReward())
    return SearchRecorder(
        space,
        evaluator or FakeEvaluator(),
        objective,
        budget=budget,
        agent="test",
        run_dir=tmp_path,
        resume=resume,
    )


def test_space_pins_first_and_last() -> None:
    space = make_space()
    assert space.searchable == [1, 2, 3]
    policy = space.policy([2, 3, 4])
    assert policy.w_bits == [8, 2, 3, 4, 8] and policy.a_bits == [8, 8, 8, 8, 8]
    assert space.searched_bits(policy) == ([2, 3, 4], [8, 8, 8])
    assert make_space(pin_first_last=None).searchable == [0, 1, 2, 3, 4]


def test_state_quant_hand_computed() -> None:
    space = make_space()
    policy = space.policy([2, 4, 8])
    assert space.state_quant(policy) == pytest.approx((2 + 4 + 8) / (8 * 3))
    macs = [240000, 48000, 10080]
    expected = (2 * macs[0] + 4 * macs[1] + 8 * macs[2]) / (8 * sum(macs))
    assert space.state_quant(policy, "macs") == pytest.approx(expected)


def test_budget_projection_walks_from_the_last_layer() -> None:
    space = make_space(search_activations=True)
    full = space.policy([8, 8, 8], [8, 8, 8])
    space.budget = space.cost.total(full) - 1  # one step off the last layer is enough
    projected = space.enforce_budget(full)
    assert space.searched_bits(projected) == ([8, 8, 8], [8, 8, 4])  # activation first
    assert space.feasible(projected)


def test_projection_counts_the_bit_steps_it_takes_off() -> None:
    space = make_space(search_activations=True)  # w 2,3,4,5,8; a 2,4,8; 3 searched layers
    full = space.policy([8, 8, 8], [8, 8, 8])
    # cheapest feasible after one full round from the last layer: every tensor one step down
    space.budget = space.cost.total(space.policy([5, 5, 5], [4, 4, 4]))
    projected = space.enforce_budget(full)
    assert space.searched_bits(projected) == ([5, 5, 5], [4, 4, 4])
    space.enforce_budget(projected)  # feasible: counted as a proposal, not cut
    stats = space.projection
    assert (stats.proposals, stats.projected, stats.steps) == (2, 1, 6)
    assert stats.steps_per_tensor(space.tensors) == 1.0  # 6 steps over 6 tensors
    assert stats.summary(space.tensors) == {"proposals": 2, "projected": 1, "steps_per_tensor": 1.0}


def test_projection_note_only_when_the_projection_set_most_bits() -> None:
    assert ProjectionStats(proposals=10, projected=4, steps=400).note("haq", 6) is None  # < half
    assert ProjectionStats(proposals=10, projected=9, steps=45).note("haq", 6) is None  # < 1 step
    note = ProjectionStats(proposals=10, projected=9, steps=108).note("haq", 6)
    assert note is not None and note.startswith("haq: 9 of its 10 proposals")
    assert "2.0 bit steps" in note


@settings(max_examples=40, deadline=None)
@given(
    w=st.lists(st.sampled_from([2, 3, 4, 5, 8]), min_size=3, max_size=3),
    a=st.lists(st.sampled_from([2, 4, 8]), min_size=3, max_size=3),
    fraction=st.floats(0.05, 1.2),
)
def test_projection_always_fits_and_never_raises_bits(
    w: list[int], a: list[int], fraction: float
) -> None:
    space = make_space(search_activations=True)
    space.budget = fraction * space.cost.total(space.uniform(8))
    if space.cost.total(space.min_policy()) > space.budget:
        with pytest.raises(UserError, match="cannot be met"):
            space.check_budget()
        return
    policy = space.policy(w, a)
    projected = space.enforce_budget(policy)
    assert space.feasible(projected)
    assert all(p <= o for p, o in zip(projected.w_bits, policy.w_bits, strict=True))
    assert all(p <= o for p, o in zip(projected.a_bits, policy.a_bits, strict=True))
    if space.feasible(policy):
        assert projected.key() == policy.key()


def _walk_down(space: SearchSpace, policy: Policy) -> Policy:
    """HAQ's projection spelt out: the whole policy's cost re-computed after every step."""
    w_bits, a_bits = space.searched_bits(policy)
    candidate = policy
    while not space.feasible(candidate):
        for position in reversed(range(len(space.searchable))):
            for bits, choices, searched in (
                (a_bits, space.a_choices, space.search_activations),
                (w_bits, space.w_choices, True),
            ):
                if searched and bits[position] > choices[0] and not space.feasible(candidate):
                    bits[position] = max(c for c in choices if c < bits[position])
                    candidate = space.policy(w_bits, a_bits)
    return candidate


@settings(max_examples=60, deadline=None)
@given(
    w=st.lists(st.sampled_from([2, 3, 4, 5, 8]), min_size=3, max_size=3),
    a=st.lists(st.sampled_from([2, 4, 8]), min_size=3, max_size=3),
    fraction=st.floats(0.1, 1.0),
    activations=st.booleans(),
)
def test_projection_equals_the_step_by_step_walk(
    w: list[int], a: list[int], fraction: float, activations: bool
) -> None:
    """The projection adds up per-layer costs from a cached table; the walk re-computes
    the whole policy's cost each step: the same policy comes out."""
    space = make_space(search_activations=activations)
    space.budget = fraction * space.cost.total(space.uniform(8))
    if space.cost.total(space.min_policy()) > space.budget:
        return
    policy = space.policy(w, a if activations else None)
    assert space.enforce_budget(policy).key() == _walk_down(space, policy).key()


def test_impossible_budget_is_a_user_error() -> None:
    space = make_space()
    space.budget = 1.0
    with pytest.raises(UserError, match=r"budget 1 \(bitops\) cannot be met"):
        space.check_budget()


@pytest.mark.parametrize(("text", "bits"), [("W3A3", (3, 3)), ("w2a4", (2, 4)), (" W8A2 ", (8, 2))])
def test_parse_uniform(text: str, bits: tuple[int, int]) -> None:
    assert parse_uniform(text) == bits


@pytest.mark.parametrize("text", ["3", "W3", "A3W3", "W3A3x", "uniform"])
def test_parse_uniform_rejects_other_spellings(text: str) -> None:
    with pytest.raises(UserError, match=rf"budget.uniform must look like W3A3.*'{text}'"):
        parse_uniform(text)


def test_uniform_pairs_within_a_w3a3_budget_hand_computed() -> None:
    """BitOPs of a uniform WxA policy = pinned layers' + w * a * (searched MACs): under
    uniform W3A3's cost exactly the pairs with w * a <= 9 fit, cheapest first."""
    space = make_space(
        w_choices=[2, 3, 4, 5, 6, 7, 8], a_choices=[2, 3, 4, 5, 6, 7, 8], search_activations=True
    )
    space.budget = space.cost.total(space.uniform_pair(3, 3))
    pinned = (117600 + 840) * 64
    assert space.budget == pinned + 9 * (240000 + 48000 + 10080)
    pairs = space.uniform_within_budget()
    assert set(pairs) == {(2, 2), (2, 3), (3, 2), (2, 4), (4, 2), (3, 3)}
    assert [w * a for w, a in pairs] == [4, 6, 6, 8, 8, 9]


def test_uniform_pairs_without_searched_activations_use_the_fixed_bits() -> None:
    space = make_space(fixed_a_bits=8)
    space.budget = space.cost.total(space.uniform_pair(4, 8))
    assert space.uniform_within_budget() == [(2, 8), (3, 8), (4, 8)]


def test_releq_reward_hand_values() -> None:
    assert releq_reward(0.5, 0.3, a=0.8, b=1.0, threshold=0.4) == -1.0
    assert releq_reward(0.5, 1.0, 0.8, 1.0, 0.4) == pytest.approx(1 - 0.5**0.8)
    assert releq_reward(0.25, 0.9, 0.8, 1.0, 0.4) == pytest.approx(
        (1 - 0.25**0.8) * 0.9 ** (1 / 0.9)
    )
    assert releq_reward(0.2, 1.0, 0.8, 1.0, 0.4) > releq_reward(0.6, 1.0, 0.8, 1.0, 0.4)
    assert releq_reward(0.5, 0.95, 0.8, 1.0, 0.4) < releq_reward(0.5, 1.0, 0.8, 1.0, 0.4)


def test_haq_reward_with_moving_baseline() -> None:
    # the reward is raw: the baseline is subtracted at update time by the haq agent's
    # replay buffer (tests/test_haq.py), so one accuracy always gets the same reward
    reward = HaqReward(scale=0.1, baseline_alpha=0.5)
    assert reward(98.0, 99.0) == pytest.approx(-0.1)  # not 0 for the first episode
    assert reward(99.0, 99.0) == pytest.approx(0.0)
    assert reward(98.0, 99.0) == pytest.approx(-0.1)  # the same later on
    assert reward.baseline_alpha == 0.5  # kept for the agent
    assert HaqReward(baseline_alpha=None)(97.0, 99.0) == pytest.approx(-0.2)


def test_action_to_bits_matches_haq_formula() -> None:
    choices = [2, 3, 4, 5, 6, 7, 8]
    for a in np.linspace(0, 1, 101):
        haq = round(2 - 0.5 + a * (8 - 2 + 1))
        assert action_to_bits(a, choices) == min(max(haq, 2), 8) or abs(a * 7 % 1 - 0.5) < 1e-9


def test_recorder_charges_each_policy_once_and_logs(tmp_path: Path) -> None:
    space = make_space()
    evaluator = FakeEvaluator()
    recorder = make_recorder(space, tmp_path, budget=2, evaluator=evaluator)
    first = recorder.evaluate(space.policy([2, 2, 2]))
    assert recorder.evaluate(space.policy([2, 2, 2])) is first
    recorder.evaluate(space.uniform(8), reference=True)  # not charged
    recorder.evaluate(space.policy([4, 4, 4]))
    assert recorder.used == 2 and recorder.exhausted and evaluator.calls == 3
    with pytest.raises(BudgetExhausted):
        recorder.evaluate(space.policy([5, 5, 5]))
    recorder.end_episode(space.policy([4, 4, 4]), 0.5, 3)
    with open(tmp_path / "evaluations.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 and rows[1]["reference"] == "True"
    assert rows[0]["bitops"] == f"{space.cost.total(space.policy([2, 2, 2])):.6g}"
    with open(tmp_path / "episodes.csv") as handle:
        episodes = list(csv.DictReader(handle))
    assert episodes[0]["w_bits"] == "8 4 4 4 8" and episodes[0]["return"] == "0.5"


def test_recorder_resume_restores_budget_and_best(tmp_path: Path) -> None:
    space = make_space()
    recorder = make_recorder(space, tmp_path, budget=5)
    for bits in (2, 3, 4):
        recorder.evaluate(space.uniform(bits))
    recorder.end_episode(space.uniform(4), 1.0, 3)
    with open(tmp_path / "evaluations.csv", "a") as handle:
        handle.write("3,0,test,8 2")  # a line torn by a crash
    evaluator = FakeEvaluator()
    resumed = make_recorder(space, tmp_path, budget=5, resume=True, evaluator=evaluator)
    assert resumed.used == 3 and resumed.episode == 1
    assert resumed.best is not None and resumed.best.w_bits == recorder.best.w_bits
    for key, before in recorder.seen.items():  # exact numbers, so ties rank the same
        after = resumed.seen[key]
        assert (after.accuracy, after.cost, after.objective) == (
            before.accuracy,
            before.cost,
            before.objective,
        )
    resumed.evaluate(space.uniform(3))
    assert evaluator.calls == 0  # already paid for before the crash


def test_recorder_counts_episodes_since_the_last_new_policy(tmp_path: Path) -> None:
    space = make_space()
    recorder = make_recorder(space, tmp_path, budget=5)
    assert recorder.stale_episodes == 0
    recorder.end_episode(space.uniform(8), 0.0, 3)  # an episode with no evaluation
    assert recorder.stale_episodes == 1
    recorder.evaluate(space.uniform(4))  # new, in episode 1
    recorder.end_episode(space.uniform(4), 0.0, 3)
    assert recorder.stale_episodes == 0
    for _ in range(3):
        recorder.evaluate(space.uniform(4))  # a repeat is not new
        recorder.evaluate(space.uniform(8), reference=True)  # nor is a reference
        recorder.end_episode(space.uniform(4), 0.0, 3)
    assert recorder.stale_episodes == 3
    assert make_recorder(space, tmp_path, budget=5, resume=True).stale_episodes == 3


def test_objective_prefers_feasible_then_accuracy(tmp_path: Path) -> None:
    space = make_space()
    space.budget = space.cost.total(space.uniform(4))
    recorder = make_recorder(space, tmp_path)
    recorder.evaluate(space.uniform(8))  # most accurate but over budget
    recorder.evaluate(space.uniform(2))
    recorder.evaluate(space.uniform(4))
    assert recorder.best is not None and recorder.best.w_bits == [8, 4, 4, 4, 8]


@pytest.mark.parametrize("every", ["step", "episode"])
def test_releq_env_passes_checkers_and_rewards(every: str, tmp_path: Path) -> None:
    space = make_space()
    recorder = make_recorder(space, tmp_path, budget=1000)
    env = ReleqEnv(space, recorder, ReleqReward(every=every), 99.0, [0.1] * 5)
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(env)
    env = ReleqEnv(space, recorder, ReleqReward(every=every), 99.0, [0.1] * 5)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (10,) and obs[1] == 1.0  # before any episode: the largest bits
    rewards = []
    for _ in range(3):  # 2 bits everywhere
        obs, reward, terminated, truncated, _ = env.step(np.array([0, 0]))
        rewards.append(reward)
    assert terminated and not truncated
    policy = space.policy([2, 2, 2])
    accuracy = FakeEvaluator()(policy).accuracy
    expected = releq_reward(space.state_quant(policy), accuracy / 99.0, 0.8, 1.0, 0.4)
    assert rewards[-1] == pytest.approx(expected)
    assert (rewards[0] != 0) == (every == "step")


def test_releq_state_carries_each_layers_bits_of_the_last_episode(tmp_path: Path) -> None:
    space = make_space()
    env = ReleqEnv(
        space, make_recorder(space, tmp_path), ReleqReward(every="episode"), 99.0, [0.1] * 5
    )
    env.reset(seed=0)
    for w in (0, 2, 4):  # 2, 4 and 8 bits
        env.step(np.array([w, 0]))
    seen = []
    obs, _ = env.reset(seed=0)
    for _ in range(3):
        seen.append(round(float(obs[1]) * 8))
        obs, *_ = env.step(np.array([0, 0]))
    assert seen == [2, 4, 8]


def test_releq_searches_activations_as_pairs(tmp_path: Path) -> None:
    space = make_space(search_activations=True)  # w in {2,3,4,5,8}, a in {2,4,8}
    env = ReleqEnv(
        space, make_recorder(space, tmp_path), ReleqReward(every="episode"), 99.0, [0.1] * 5
    )
    assert list(env.action_space.nvec) == [5, 3]
    env.reset(seed=0)
    for action in ([0, 0], [0, 1], [4, 2]):  # (2, 2), (2, 4), (8, 8)
        env.step(np.array(action))
    assert space.searched_bits(env.recorder.best_policy()) == ([2, 2, 8], [2, 4, 8])


def test_releq_under_a_budget_projects_and_evaluates_once_per_episode(tmp_path: Path) -> None:
    space = make_space(search_activations=True)
    space.budget = 0.45 * space.cost.total(space.uniform(8))
    recorder = make_recorder(space, tmp_path)
    env = ReleqEnv(space, recorder, ReleqReward(every="step"), 99.0, [0.1] * 5)
    obs, _ = env.reset(seed=0)
    assert obs[5] > 0  # the committed cost feature
    rewards = [env.step(np.array([4, 2]))[1] for _ in range(3)]  # 8 bits: over the budget
    assert rewards[:2] == [0.0, 0.0] and recorder.used == 1
    best = recorder.best
    assert best is not None and best.feasible and best.cost <= space.budget
    assert rewards[2] == pytest.approx((best.accuracy / 99.0) ** (99.0 / best.accuracy))


@pytest.mark.filterwarnings("ignore:We recommend you to use a symmetric")
def test_haq_env_passes_checkers_and_respects_budget(tmp_path: Path) -> None:
    space = make_space(
        w_choices=[2, 3, 4, 5, 6, 7, 8], a_choices=[2, 3, 4, 5, 6, 7, 8], search_activations=True
    )
    space.budget = 0.5 * space.cost.total(space.uniform(8))
    recorder = make_recorder(space, tmp_path, budget=1000)
    env = HaqEnv(space, recorder, HaqReward(baseline_alpha=None), 99.0)
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(env)
    env.reset(seed=0)
    assert len(env.plan) == 6
    for _ in range(5):
        _, reward, terminated, _, _ = env.step(np.array([1.0], np.float32))
        assert reward == 0.0 and not terminated
    _, reward, terminated, _, info = env.step(np.array([1.0], np.float32))
    assert terminated and info["cost"] <= space.budget
    assert reward == pytest.approx(0.1 * (info["accuracy"] - 99.0))


@pytest.mark.parametrize(
    ("budget", "pairs"),
    [
        ("W3A3", {(2, 2), (2, 3), (3, 2), (2, 4), (4, 2), (3, 3)}),
        ("W2A3", {(2, 2), (2, 3), (3, 2)}),
    ],
)
def test_mixed_benchmark_yardstick_on_resnet20(budget: str, pairs: set[tuple[int, int]]) -> None:
    """experiment=mp_resnet20_cifar10 composes a BitOPs budget at the uniform policy's cost,
    and the uniform yardstick is every WxA with w * a at most the budget's (no data read)."""
    from qsearch.commands.search import build_space
    from qsearch.config import job_config
    from qsearch.setup import Setup

    cfg = job_config("search", ["experiment=mp_resnet20_cifar10", f"budget.uniform={budget}"])
    setup = Setup.from_config(cfg)
    space = build_space(setup.cfg, setup.inventory)
    assert len(space.searchable) == len(setup.inventory) - 2 and space.search_activations
    assert set(space.uniform_within_budget()) == pairs


@pytest.mark.parametrize("experiment", ["mp_lenet5_mnist", "mp_resnet20_cifar10"])
def test_mixed_experiments_set_retraining_steps_only_for_the_retrain_evaluator(
    experiment: str,
) -> None:
    """The experiments' 200 retraining steps reach evaluator=retrain, and evaluator=supernet
    composes without a ``steps`` key it would silently ignore."""
    from qsearch.config import job_config

    retrain = job_config("search", [f"experiment={experiment}"])
    assert retrain.evaluator.name == "retrain" and retrain.evaluator.steps == 200
    supernet = job_config("search", [f"experiment={experiment}", "evaluator=supernet"])
    assert "steps" not in supernet.evaluator

"""Every agent in conf/agent/ spends exactly the evaluation budget on a fake evaluator,
records episodes, and (RL agents) saves itself so that a resumed search continues."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import pytest
import torch
from sb3_contrib import RecurrentPPO

from qsearch.agents import SearchContext, evaluate_uniform_start
from qsearch.agents._sb3 import AGENT_FILE, save_atomic
from qsearch.agents.haq import HaqAgent
from qsearch.agents.releq import ReleqAgent
from qsearch.config import group_options, instantiate_checked
from qsearch.env.recorder import Objective, SearchRecorder
from qsearch.env.rewards import ReleqReward
from qsearch.env.space import SearchSpace
from qsearch.env.synthetic import SyntheticConfig, SyntheticLandscape
from qsearch.setup import Setup
from tests.conftest import compose
from tests.test_search_env import FakeEvaluator, bitops_oracle

pytestmark = pytest.mark.filterwarnings("ignore:We recommend you to use a symmetric")


def _context(
    agent: str,
    tmp_path: Path,
    budget: int,
    resume: bool = False,
    evaluator: FakeEvaluator | None = None,
    cost_fraction: float | None = None,
    synthetic: bool = False,
    overrides: tuple[str, ...] = (),
) -> tuple[SearchContext, object]:
    """A search context on lenet5/digits; ``synthetic``: on a synthetic landscape (3
    searched layers, 2/4/8-bit weights, 8-bit activations) instead of ``evaluator``."""
    if synthetic:
        overrides = ("search.w_bits=[2,4,8]", "search.search_activations=false", *overrides)
    cfg = compose("search", f"agent={agent}", "runtime.precision=fp32", *overrides)
    torch.manual_seed(0)  # the float model's initialization
    setup = Setup.from_config(cfg)
    inventory = setup.inventory
    search = cfg.search
    oracle = bitops_oracle(inventory)
    space = SearchSpace(
        model="lenet5",
        dataset="digits",
        inventory=inventory,
        w_choices=list(search.w_bits),
        a_choices=list(search.a_bits),
        cost=oracle,
        search_activations=bool(search.search_activations),
        fixed_a_bits=int(search.fixed_a_bits),
        pin_first_last=search.pin_first_last,
    )
    if cost_fraction is not None:
        space.budget = cost_fraction * oracle.total(space.uniform(8))
    landscape = SyntheticLandscape(space, SyntheticConfig(float_accuracy=99.0))
    if synthetic:
        evaluator = landscape
    reward = instantiate_checked(cfg.reward)
    objective = Objective(space, 99.0, reward if isinstance(reward, ReleqReward) else ReleqReward())
    recorder = SearchRecorder(
        space,
        evaluator or FakeEvaluator(),
        objective,
        budget=budget,
        agent=agent,
        run_dir=tmp_path,
        resume=resume,
    )
    ctx = SearchContext(
        space=space,
        recorder=recorder,
        float_accuracy=99.0,
        reward=reward,
        run_dir=tmp_path,
        seed=0,
        resume=resume,
        float_model=setup.float_model,
        data=setup.data,
        spec=setup.spec,
        runtime=setup.runtime,
        sensitivities=(lambda: landscape.estimate(0)) if synthetic else None,
    )
    return ctx, instantiate_checked(cfg.agent, _convert_="all")


AGENTS = group_options("agent")


@pytest.mark.parametrize("agent", AGENTS)
def test_agent_spends_its_budget(agent: str, tmp_path: Path) -> None:
    budget = 5 if agent == "uniform" else 12
    fraction = 0.6 if agent == "haq" else None
    ctx, search_agent = _context(agent, tmp_path, budget, cost_fraction=fraction)
    search_agent.search(ctx)
    expected = len(ctx.space.w_choices) if agent == "uniform" else budget
    assert ctx.recorder.used == expected
    assert ctx.recorder.episode >= 1 and ctx.recorder.best is not None
    if fraction is not None:
        assert ctx.recorder.best.feasible


@pytest.mark.parametrize("agent", ["releq", "haq", "bayes"])
def test_agent_resumes_without_paying_twice(agent: str, tmp_path: Path) -> None:
    fraction = 0.6 if agent == "haq" else None
    ctx, search_agent = _context(agent, tmp_path, 8, cost_fraction=fraction)
    search_agent.search(ctx)
    assert ctx.recorder.used == 8
    saved = {"releq": "agent.zip", "haq": "replay_buffer.pkl", "bayes": "optuna.db"}[agent]
    assert (tmp_path / saved).is_file()
    evaluator = FakeEvaluator()
    resumed, agent_again = _context(
        agent, tmp_path, 14, resume=True, evaluator=evaluator, cost_fraction=fraction
    )
    assert resumed.recorder.used == 8
    agent_again.search(resumed)
    assert resumed.recorder.used == 14
    assert evaluator.calls == 6  # the policies seen before the restart are not paid again


@pytest.mark.parametrize("agent", ["releq", "haq"])
def test_search_stops_once_patience_episodes_bring_nothing_new(agent: str, tmp_path: Path) -> None:
    """27 policies in the space and a budget of 100: only the patience rule ends the run."""
    ctx, search_agent = _context(agent, tmp_path, 100, synthetic=True)
    ctx.patience = 5
    search_agent.search(ctx)
    recorder = ctx.recorder
    assert recorder.used <= 27 and not recorder.exhausted
    assert recorder.stale_episodes == 5


def test_uniform_start_evaluates_the_dearest_uniform_policies_within_budget(
    tmp_path: Path,
) -> None:
    """W in {2,4,8} at 8-bit activations, 70 % of the 8-bit BitOPs: W4A8 and W2A8 fit; a
    quarter of 8 evaluations is 2, so both are evaluated (charged), dearest first."""
    ctx, _ = _context("random", tmp_path, 8, cost_fraction=0.7, synthetic=True)
    space = ctx.space
    assert space.uniform_within_budget() == [(2, 8), (4, 8)]
    started = evaluate_uniform_start(ctx, 0.25)
    assert [e.w_bits for e in started] == [space.uniform(4).w_bits, space.uniform(2).w_bits]
    assert ctx.recorder.used == 2 and all(e.feasible for e in started)
    assert len(evaluate_uniform_start(ctx, 0.2)) == 1  # int(0.2 x 8) = 1, cached: free
    assert ctx.recorder.used == 2


def test_uniform_start_needs_a_cost_budget_and_a_share(tmp_path: Path) -> None:
    ctx, _ = _context("random", tmp_path, 8, synthetic=True)
    assert evaluate_uniform_start(ctx, 0.25) == []
    (tmp_path / "b").mkdir()
    ctx, _ = _context("random", tmp_path / "b", 8, cost_fraction=0.5, synthetic=True)
    assert evaluate_uniform_start(ctx, 0.0) == [] and ctx.recorder.used == 0


def test_agent_save_killed_midway_keeps_the_previous_file(tmp_path: Path) -> None:
    ctx, search_agent = _context("releq", tmp_path, 8)
    search_agent.search(ctx)
    saved = tmp_path / AGENT_FILE
    before = saved.read_bytes()

    def dies_halfway(handle: BinaryIO) -> None:
        handle.write(before[: len(before) // 2])
        raise KeyboardInterrupt  # as a kill lands in the middle of algorithm.save

    with pytest.raises(KeyboardInterrupt):
        save_atomic(saved, dies_halfway)
    assert saved.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    assert RecurrentPPO.load(saved, device="cpu").n_steps > 0


def test_releq_warns_below_three_ppo_updates() -> None:
    agent = ReleqAgent(episodes_per_update=4)
    assert agent.learning_note(episodes=12, evaluations=30) is None  # 3 updates
    note = agent.learning_note(episodes=11, evaluations=30)
    assert note is not None
    assert "30 evaluations took 11 episodes, i.e. 2 PPO update(s)" in note
    assert "reward.every=episode" in note


def test_haq_warns_when_warmup_outnumbers_learned_episodes() -> None:
    agent = HaqAgent(warmup_episodes=20)
    assert agent.learning_note(episodes=40, evaluations=40) is None  # 20 warm-up, 20 learned
    note = agent.learning_note(episodes=39, evaluations=39)
    assert note is not None and "20 of its 39 episodes" in note and "and 19 followed" in note
    note = agent.learning_note(episodes=12, evaluations=12)
    assert note is not None and "12 of its 12 episodes" in note and "and 0 followed" in note

"""Run an agent on a synthetic landscape (``evaluator=synthetic``) in-process, without the
command's outputs: what ``scripts/bench_agents.py`` and the agent tests measure regret on.

The space is the one ``qsearch search`` composes from the same overrides; the cost budget
is set to a uniform policy's cost (``uniform_bits``, e.g. W3A3 with first/last at 8) rather
than a fraction, so that benchmarks state it the way papers do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from qsearch.agents import SearchContext, run_search
from qsearch.config import instantiate_checked, job_config
from qsearch.env.recorder import Evaluation, Objective, SearchRecorder
from qsearch.env.rewards import ReleqReward
from qsearch.env.space import SearchSpace
from qsearch.env.surrogate import ModelProposals
from qsearch.env.synthetic import SyntheticConfig, SyntheticLandscape
from qsearch.setup import Setup


@dataclass
class LandscapeRun:
    """A finished search: its evaluations in order, the landscape and the recorder."""

    evaluations: list[Evaluation]
    landscape: SyntheticLandscape
    recorder: SearchRecorder

    def regret_after(self, count: int) -> float | None:
        """Regret of the policy the search would return after ``count`` evaluations (the
        best by *observed* objective, feasible first); None if none was feasible."""
        seen = self.evaluations[:count]
        if not seen:
            return None
        best = max(seen, key=lambda e: e.rank)
        if not best.feasible:
            return None
        space = self.landscape.space
        return self.landscape.regret(space.policy(*_searched_bits(space, best)))


def _searched_bits(space: SearchSpace, evaluation: Evaluation) -> tuple[list[int], list[int]]:
    return (
        [evaluation.w_bits[i] for i in space.searchable],
        [evaluation.a_bits[i] for i in space.searchable],
    )


def landscape_space(
    overrides: list[str], uniform_bits: tuple[int, int] | None = None
) -> tuple[Setup, SearchSpace, SyntheticLandscape]:
    """The setup of the composed config (``evaluator=synthetic`` added), its space, with
    the budget at uniform ``(w, a)`` bits' cost when given, and the landscape."""
    from qsearch.commands.search import build_space

    setup = Setup.from_config(job_config("search", ["evaluator=synthetic", *overrides]))
    cfg = setup.cfg
    space = build_space(cfg, setup.inventory)
    if uniform_bits is not None:
        space.budget = space.cost.total(space.uniform_pair(*uniform_bits))
    landscape = SyntheticLandscape(space, SyntheticConfig.from_config(cfg.evaluator))
    return setup, space, landscape


def search_landscape(
    overrides: list[str],
    run_dir: Path,
    *,
    uniform_bits: tuple[int, int] | None = (3, 3),
    max_episodes: int | None = None,
) -> LandscapeRun:
    """Search with the agent ``overrides`` compose (``agent=haq seed=1 ...``)."""
    setup, space, landscape = landscape_space(overrides, uniform_bits)
    cfg, seed = setup.cfg, int(setup.cfg.seed)
    torch.manual_seed(seed)
    reward = instantiate_checked(cfg.reward)
    agent = instantiate_checked(cfg.agent, _convert_="all")
    releq = reward if isinstance(reward, ReleqReward) else ReleqReward()
    recorder = SearchRecorder(
        space,
        landscape,
        Objective(space, landscape.float_accuracy, releq),
        budget=int(cfg.budget.evaluations),
        agent=agent.name,
        run_dir=run_dir,
        proposer=ModelProposals(space, int(cfg.search.model_every), int(cfg.search.model_after)),
    )
    ctx = SearchContext(
        space=space,
        recorder=recorder,
        float_accuracy=landscape.float_accuracy,
        reward=reward,
        run_dir=run_dir,
        seed=seed,
        resume=False,
        float_model=setup.float_model,
        data=None,
        spec=setup.spec,
        runtime=setup.runtime,
        max_episodes=max_episodes,
        patience=cfg.search.patience,
        sensitivities=lambda: landscape.estimate(seed),
    )
    run_search(agent, ctx, float(cfg.search.uniform_start))
    return LandscapeRun(recorder.searched(), landscape, recorder)

"""Glue between stable-baselines3 agents and the search: stopping and checkpointing."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback

from qsearch.agents import SearchContext
from qsearch.env.recorder import BudgetExhausted
from qsearch.env.surrogate import AdditiveSurrogate, Imagination
from qsearch.utils.io import write_atomic

AGENT_FILE = "agent.zip"


def save_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write an SB3 file (``algorithm.save``, ``save_replay_buffer``) to ``path`` through a
    temporary file: a search killed mid-save leaves the previous file whole for ``resume``.

    SB3 is handed an open file, not the temporary path: given a path that does not end in
    ``.zip`` (the temporary one ends in ``.tmp``), ``save`` writes to ``<path>.zip`` instead.
    """

    def writer(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            write(handle)

    write_atomic(path, writer)


class SearchCallback(BaseCallback):
    """Stops learning once the budget is spent; saves the agent after every rollout.

    Saving at rollout ends (when PPO updates, and after every DDPG episode) is what
    ``qsearch search resume=<run dir>`` continues from; evaluations made after the last
    save are not lost either, as the evaluation cache and the recorder's CSVs hold them.
    """

    def __init__(self, ctx: SearchContext, save: Callable[[BaseAlgorithm], None]) -> None:
        super().__init__()
        self.ctx = ctx
        self.save = save

    def _on_step(self) -> bool:
        return not self.ctx.done()

    def _on_rollout_end(self) -> None:
        self.save(self.model)


def learn_within_budget(
    model: BaseAlgorithm,
    ctx: SearchContext,
    steps_per_episode: int,
    save: Callable[[BaseAlgorithm], None],
    imagined_per_real: int = 0,
) -> None:
    """Run ``model.learn`` until the callback stops it (the step cap is only a backstop;
    ``imagined_per_real`` model-scored episodes follow each evaluated one)."""
    episodes = (ctx.max_episodes or 100 * ctx.recorder.budget) * (1 + imagined_per_real)
    with contextlib.suppress(BudgetExhausted):
        model.learn(
            total_timesteps=episodes * steps_per_episode,
            callback=SearchCallback(ctx, save),
            reset_num_timesteps=not ctx.resume,
        )
    save(model)


def imagination(ctx: SearchContext, episodes: int, after: int) -> Imagination | None:
    """Dyna's imagined episodes for an RL agent (``agent.imagined_episodes`` per real one,
    once ``agent.imagine_after`` policies are evaluated), None when off. A resumed search
    refits the model on the evaluations it has made so far."""
    if episodes <= 0:
        return None
    plan = Imagination(AdditiveSurrogate(ctx.space), episodes, after)
    for evaluation in ctx.recorder.searched():
        plan.surrogate.add(ctx.recorder.policy_of(evaluation), evaluation.accuracy)
    return plan

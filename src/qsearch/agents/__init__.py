"""Search agents. Each one sees the search only through a :class:`SearchContext`.

RL agents (``releq``: sb3-contrib RecurrentPPO; ``haq``: stable-baselines3 DDPG) drive the
gymnasium envs of :mod:`qsearch.env.quant_env`; the baselines (``uniform``, ``random``,
``hawq``, ``bayes``) propose policies directly. All of them spend the same budget, counted
in distinct policies evaluated, through the context's recorder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from torch import nn

from qsearch.data import DataSplits
from qsearch.env.recorder import Evaluation, SearchRecorder
from qsearch.env.rewards import HaqReward, ReleqReward
from qsearch.env.space import SearchSpace
from qsearch.quant.layers import QuantizerSpec
from qsearch.train.runtime import Runtime

SensitivityEstimate = Callable[[], tuple[np.ndarray, np.ndarray]]


@dataclass
class SearchContext:
    """Everything an agent may use. ``resume``: continue the search saved in ``run_dir``.

    ``patience``: stop after this many episodes in a row without a new policy (None: never).
    ``sensitivities``: where the evaluator has its own estimate of per-layer sensitivities
    (the synthetic landscape), a function returning ``(omega_w, omega_a)``, arrays of shape
    ``(searched layers, len(w_choices))`` and ``(searched layers, len(a_choices))``: the
    predicted accuracy loss of each layer at each bitwidth. None: HAWQ measures Hessian
    traces on ``float_model`` and ``data`` (both None under the synthetic evaluator).
    """

    space: SearchSpace
    recorder: SearchRecorder
    float_accuracy: float
    reward: ReleqReward | HaqReward
    run_dir: Path
    seed: int
    resume: bool
    float_model: nn.Module
    data: DataSplits | None
    spec: QuantizerSpec
    runtime: Runtime
    max_episodes: int | None = None
    sensitivities: SensitivityEstimate | None = None
    patience: int | None = None

    def done(self) -> bool:
        """True once the evaluation budget or the episode cap is spent, or once ``patience``
        episodes in a row proposed only policies already evaluated (a converged agent)."""
        capped = self.max_episodes is not None and self.recorder.episode >= self.max_episodes
        stale = self.patience is not None and self.recorder.stale_episodes >= self.patience
        return self.recorder.exhausted or capped or stale


def evaluate_uniform_start(ctx: SearchContext, share: float) -> list[Evaluation]:
    """Evaluate the uniform WxA policies within the cost budget before the agent searches,
    most expensive first, spending at most ``share`` of the evaluation budget (charged like
    any evaluation). The search then returns at least the best of them: the yardstick a
    mixed policy has to beat (what a user would try by hand). Nothing without a cost budget
    (there is no yardstick then); a resumed search finds them cached, free."""
    space, recorder = ctx.space, ctx.recorder
    if space.budget is None or share <= 0:
        return []
    pairs = space.uniform_within_budget()[::-1]  # most expensive, usually most accurate
    count = min(len(pairs), int(share * recorder.budget))
    return [recorder.evaluate(space.uniform_pair(w, a)) for w, a in pairs[:count]]


class Agent(Protocol):
    """A search agent: spends ``ctx``'s budget; the recorder keeps what it found."""

    name: str

    def search(self, ctx: SearchContext) -> None: ...


def run_search(agent: Agent, ctx: SearchContext, uniform_start: float) -> None:
    """A whole search: the uniform start (:func:`evaluate_uniform_start`), the agent, and,
    when the agent stopped with budget left (no new policy for ``patience`` episodes, or
    ``max_episodes``), the accuracy model's proposals for the rest of it: a converged HAQ
    left 51 of 200 evaluations unspent on the ResNet-20 supernet
    (``SearchRecorder.spend_rest_on_proposer``). An agent with ``takes_proposals = False``
    (the uniform yardstick, which must stay uniform) gets no proposals at all."""
    if not getattr(agent, "takes_proposals", True):
        ctx.recorder.proposer = None
    evaluate_uniform_start(ctx, uniform_start)
    agent.search(ctx)
    ctx.recorder.spend_rest_on_proposer()

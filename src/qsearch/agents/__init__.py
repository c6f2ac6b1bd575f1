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
from qsearch.env.recorder import SearchRecorder
from qsearch.env.rewards import HaqReward, ReleqReward
from qsearch.env.space import SearchSpace
from qsearch.quant.layers import QuantizerSpec
from qsearch.train.runtime import Runtime

SensitivityEstimate = Callable[[], tuple[np.ndarray, np.ndarray]]


@dataclass
class SearchContext:
    """Everything an agent may use. ``resume``: continue the search saved in ``run_dir``.

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

    def done(self) -> bool:
        """True once the evaluation budget or the episode cap is spent."""
        capped = self.max_episodes is not None and self.recorder.episode >= self.max_episodes
        return self.recorder.exhausted or capped


class Agent(Protocol):
    """A search agent: spends ``ctx``'s budget; the recorder keeps what it found."""

    name: str

    def search(self, ctx: SearchContext) -> None: ...

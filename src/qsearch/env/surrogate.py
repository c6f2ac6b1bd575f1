"""Model-based search for the RL agents: an additive accuracy model fitted on every
evaluated policy, and imagined episodes scored by it.

The model is the additive quantization-noise model (Zhou et al., *Adaptive Quantization for
Deep Neural Network*, AAAI 2018; the same assumption as HAWQ's summed sensitivities):

    accuracy(policy) ~ c - sum_l alpha_l * q(w_l) - sum_l beta_l * q(a_l),   q(b) = 4^-b,

with ``alpha, beta >= 0`` (more bits never hurt), fitted by non-negative least squares with
a small ridge on the sensitivities (``scipy.optimize.nnls`` on an augmented system). It has
``2L + 1`` parameters, so it is pinned down after a few dozen evaluations, where the agents'
networks have hundreds of thousands.

Imagination (Dyna, Sutton, 1991): after each real evaluation the env plays
``episodes`` more episodes that are scored by the model instead of an evaluation. The SB3
learner sees them like any other episode, so PPO's and DDPG's updates are unchanged; only
the evaluation budget is spent more slowly. An imagined episode's policy is projected onto
the budget as a real one is, and its reward is the agent's usual one computed from the
model's prediction instead of an evaluation. Measured in docs/benchmarks.md (agents
``releq+model16``): it helps ReLeQ on the resnet20-shaped landscape, whose law the model
shares, but not HAQ, whose actor saturates at the highest bits either way; ReLeQ rewarded per
layer by the model's Lagrangian (``accuracy - multiplier x cost / budget``, the multiplier
by dual ascent) was tried and did no better.

Model proposals (``search.model_every``, :class:`ModelProposals`): once ``search.model_after``
policies are evaluated, every ``model_every``-th evaluation of any agent's search goes to the
policy the freshly fitted model ranks most accurate within the cost budget among those not
evaluated yet: an exact multiple-choice knapsack over the model's per-layer losses (the
HAWQ-V3 integer program, Yao et al., ICML 2021, with sensitivities fitted to evaluations
instead of Hessian traces). The agent's own proposals are untouched; the search returns the
best of both.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from scipy.optimize import nnls

from qsearch.env.optimum import LayerOptions, solve_mckp
from qsearch.env.space import SearchSpace
from qsearch.env.synthetic import noise_power
from qsearch.quant.policy import Policy

if TYPE_CHECKING:
    from qsearch.env.recorder import SearchRecorder


@dataclass
class AdditiveSurrogate:
    """The additive noise model above over ``space``'s searched layers.

    ``ridge``: weight of the penalty ``ridge * n * |theta|^2`` on the sensitivities, in
    the units of ``q`` x points (keeps the fit defined with fewer evaluations than
    parameters, and shrinks towards "insensitive").
    """

    space: SearchSpace
    ridge: float = 1e-4
    seen: dict[str, tuple[np.ndarray, float]] = field(default_factory=dict, init=False)
    intercept: float = field(default=0.0, init=False)
    alpha: np.ndarray = field(init=False)
    beta: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        n = len(self.space.searchable)
        self.alpha, self.beta = np.zeros(n), np.zeros(n)

    def _features(self, policy: Policy) -> np.ndarray:
        w_bits, a_bits = self.space.searched_bits(policy)
        return np.concatenate([noise_power(w_bits), noise_power(a_bits)])

    def add(self, policy: Policy, accuracy: float) -> None:
        """One evaluated policy (a policy seen before is kept once)."""
        self.seen[policy.key()] = (self._features(policy), float(accuracy))

    def __len__(self) -> int:
        return len(self.seen)

    def fit(self) -> None:
        """Least squares over every added policy with ``alpha, beta >= 0`` (the intercept
        is free: it is centred out before the non-negative solve)."""
        if not self.seen:
            return
        q = np.array([row for row, _ in self.seen.values()])
        y = np.array([accuracy for _, accuracy in self.seen.values()])
        q_mean, y_mean = q.mean(axis=0), y.mean()
        design = -(q - q_mean)  # accuracy falls with noise: coefficients >= 0
        scale = np.maximum(np.abs(design).max(axis=0), 1e-12)
        penalty = np.sqrt(self.ridge * len(y)) * np.eye(q.shape[1])
        theta, _ = nnls(
            np.vstack([design / scale, penalty]), np.concatenate([y - y_mean, np.zeros_like(scale)])
        )
        theta = theta / scale
        n = len(self.alpha)
        self.alpha, self.beta = theta[:n], theta[n:]
        self.intercept = float(y_mean + theta @ q_mean)

    def predict(self, policy: Policy) -> float:
        features = self._features(policy)
        n = len(self.alpha)
        return self.intercept - float(self.alpha @ features[:n] + self.beta @ features[n:])


@dataclass
class Imagination:
    """Dyna's schedule: ``episodes`` imagined episodes after each real evaluation, once
    ``after`` real evaluations have fitted the model (0 ``episodes``: off)."""

    surrogate: AdditiveSurrogate
    episodes: int = 0
    after: int = 10
    pending: int = 0
    imagined: int = 0

    @property
    def active(self) -> bool:
        return self.episodes > 0

    @property
    def fitted(self) -> bool:
        """Whether the model has been fitted (``after`` policies evaluated)."""
        return len(self.surrogate) >= self.after

    def next_is_imagined(self) -> bool:
        """Whether the episode now ending is scored by the model (consumes one)."""
        if self.pending > 0:
            self.pending -= 1
            self.imagined += 1
            return True
        return False

    def observe(self, policy: Policy, accuracy: float) -> None:
        """A real evaluation: refit, and schedule the next imagined episodes."""
        self.surrogate.add(policy, accuracy)
        if self.fitted:
            self.surrogate.fit()
            self.pending = self.episodes

    def predict(self, policy: Policy) -> float:
        return self.surrogate.predict(policy)


@dataclass
class ModelProposals:
    """Which policy, if any, the additive model adds to a search after each charged
    evaluation (the recorder's ``proposer``; the module docstring has the method).

    ``every``: a proposal when the count of charged evaluations is a multiple of it (so
    ``1 / every`` of the budget goes to the model; 0: never), or at any count once the agent
    has stopped with budget left (``anytime``); ``after``: none before this
    many evaluations; ``max_cuts``: how many already evaluated model optima one round may
    cut off before giving up (cuts are kept for later rounds: an evaluated policy stays
    evaluated). Nothing without a cost budget (the model ranks accuracy at a fixed cost,
    not the accuracy-cost trade-off of ReLeQ's objective). The fit leaves out evaluations
    whose retraining diverged (chance accuracy says nothing about the bits). Its only state
    is the recorder's and these cuts, which a resumed search finds again, so it proposes as
    the interrupted one would have.
    """

    space: SearchSpace
    every: int
    after: int = 20
    max_cuts: int = 50
    cuts: list[list[int]] = field(default_factory=list, init=False)
    table: LayerOptions | None = field(default=None, init=False)  # None: proposals off

    def __post_init__(self) -> None:
        if self.every > 0 and self.space.budget is not None:
            self.table = LayerOptions.of(self.space)

    def __call__(self, recorder: SearchRecorder, anytime: bool = False) -> Policy | None:
        used = recorder.used
        if self.table is None or used < self.after or (used % self.every and not anytime):
            return None
        surrogate = AdditiveSurrogate(self.space)
        for evaluation in recorder.searched():
            if not evaluation.diverged:
                surrogate.add(recorder.policy_of(evaluation), evaluation.accuracy)
        surrogate.fit()
        return self.best_unseen(surrogate, recorder.seen)

    def best_unseen(self, surrogate: AdditiveSurrogate, seen: Collection[str]) -> Policy | None:
        """The model's most accurate policy within the budget whose key is not in ``seen``."""
        assert self.table is not None and self.space.budget is not None
        values = self.table.additive_values(surrogate.alpha, surrogate.beta, noise_power)
        budget = self.space.budget - self.table.fixed_cost
        for _ in range(self.max_cuts + 1):
            try:
                choice = solve_mckp(values, self.table.cost, budget, self.cuts)
            except ValueError:
                return None  # every policy within the budget is cut off
            policy = self.table.policy(self.space, choice)
            if policy.key() not in seen:
                return policy
            self.cuts.append(choice)
        return None

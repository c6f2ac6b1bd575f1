"""Exact per-layer bit allocation under a cost budget: a multiple-choice knapsack.

With an additive score (the synthetic landscape's accuracy, HAWQ's summed sensitivities)
and an additive cost (BitOPs, per-layer latency), the best policy under a budget picks one
option per searched layer to maximise ``sum_l value[l, k_l]`` subject to
``sum_l cost[l, k_l] <= budget``: the multiple-choice knapsack problem (Kellerer et al.,
*Knapsack Problems*, ch. 11). It is NP-hard in general but small here (tens of layers, at
most 49 (w, a) options each), and scipy's HiGHS MILP solves it exactly in milliseconds.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from qsearch.env.space import SearchSpace
from qsearch.quant.policy import Policy


@dataclass(frozen=True)
class LayerOptions:
    """Every (weight, activation) bits option of each searched layer, and its cost.

    ``cost[l, k]`` is searched layer ``l``'s cost at ``options[k]``; ``fixed_cost`` is what
    the pinned layers cost (the same in every policy of the space).
    """

    options: list[tuple[int, int]]
    cost: np.ndarray
    fixed_cost: float

    @classmethod
    def of(cls, space: SearchSpace) -> LayerOptions:
        """The options ``space`` searches (activations at ``fixed_a_bits`` when they are
        not searched); costs from the space's oracle, one uniform policy per option
        (:meth:`SearchSpace.layer_costs`).

        Assumes a layer's cost depends on its own bits only (true of every cost model in
        ``qsearch.hardware``: each prices a layer from its shape and bits).
        """
        a_choices = space.a_choices if space.search_activations else [space.fixed_a_bits]
        options = [(w, a) for w in space.w_choices for a in a_choices]
        columns, fixed = [], 0.0
        for w, a in options:
            per_layer = space.layer_costs(w, a)
            columns.append([per_layer[i] for i in space.searchable])
            fixed = float(sum(per_layer) - sum(columns[-1]))
        return cls(options, np.array(columns, dtype=np.float64).T, fixed)

    def policy_cost(self, choice: list[int]) -> float:
        return self.fixed_cost + float(self.cost[np.arange(len(choice)), choice].sum())

    def policy(self, space: SearchSpace, choice: Sequence[int]) -> Policy:
        """``space``'s policy with searched layer ``l`` at ``options[choice[l]]``."""
        picked = [self.options[k] for k in choice]
        return space.policy([w for w, _ in picked], [a for _, a in picked])

    def additive_values(
        self, s: np.ndarray, r: np.ndarray, q: Callable[[np.ndarray], np.ndarray]
    ) -> np.ndarray:
        """Knapsack values ``-(s_l q(w_k) + r_l q(a_k))`` of an additive accuracy loss, per
        searched layer ``l`` and option ``k = (w_k, a_k)``."""
        w = np.array([option[0] for option in self.options])
        a = np.array([option[1] for option in self.options])
        return -(np.outer(s, q(w)) + np.outer(r, q(a)))


def solve_mckp(
    values: np.ndarray,
    costs: np.ndarray,
    budget: float,
    exclude: Sequence[Sequence[int]] = (),
) -> list[int]:
    """The option index per row maximising ``sum values[l, k_l]`` with
    ``sum costs[l, k_l] <= budget``, solved exactly (HiGHS branch and bound, zero gap).

    ``exclude``: choices (one option index per row) that may not be returned, each cut off
    by a no-good constraint ``sum_l x[l, k_l] <= layers - 1`` (the best choice that differs
    from all of them in at least one row).

    Raises:
        ValueError: no choice fits the budget (or every fitting one is excluded).
    """
    values, costs = np.asarray(values, np.float64), np.asarray(costs, np.float64)
    layers, choices = values.shape
    if costs.min(axis=1).sum() > budget * (1 + 1e-9):
        raise ValueError(f"no choice fits the budget {budget:.6g}")
    one_per_layer = np.kron(np.eye(layers), np.ones(choices))
    scale = max(float(np.abs(costs).max()), 1e-30)  # keep the constraint well conditioned
    constraints = [
        LinearConstraint(one_per_layer, 1, 1),
        LinearConstraint((costs / scale).reshape(1, -1), -np.inf, budget / scale * (1 + 1e-9)),
    ]
    if exclude:
        cuts = np.zeros((len(exclude), layers * choices))
        for row, choice in enumerate(exclude):
            cuts[row, np.arange(layers) * choices + np.asarray(choice)] = 1.0
        constraints.append(LinearConstraint(cuts, -np.inf, layers - 1))
    with _native_stdout_discarded():
        result = milp(
            -values.reshape(-1),
            constraints=constraints,
            integrality=np.ones(values.size),
            bounds=Bounds(0, 1),
            options={"mip_rel_gap": 0.0},
        )
    if result.x is None:
        raise ValueError(f"the knapsack solver failed: {result.message}")
    return [int(k) for k in result.x.reshape(layers, choices).argmax(axis=1)]


@contextlib.contextmanager
def _native_stdout_discarded() -> Iterator[None]:
    """Discard what native code writes to file descriptor 1 meanwhile. The HiGHS
    bundled with scipy prints a stray debug line on some solves ("HighsMipSolverData::
    transformNewIntegerFeasibleSolution tmpSolver.run();", ERGO-Code/HiGHS#2783) straight
    from C++, where ``contextlib.redirect_stdout`` cannot reach it."""
    fd = 1  # C's stdout, whatever Python's sys.stdout is now
    try:
        libc_fflush = ctypes.CDLL(None).fflush
        saved = os.dup(fd)
    except (AttributeError, OSError):  # no libc to flush, or no stdout at all: let it be
        yield
        return
    sys.stdout.flush()
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), fd)
            try:
                yield
            finally:
                libc_fflush(None)  # C's buffered output goes to /dev/null, not later to fd
    finally:
        os.dup2(saved, fd)
        os.close(saved)

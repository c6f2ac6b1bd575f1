"""The search space: which layers are searched, their bit choices, cost and budget.

Every agent (RL or not) builds policies through a :class:`SearchSpace`, so pinning,
activation bits and the HAQ budget projection are the same for all of them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from qsearch.errors import UserError
from qsearch.models.inventory import LayerInfo
from qsearch.quant.policy import Policy


@dataclass
class CostOracle:
    """A hardware cost model reduced to what the search needs (see ``qsearch.hardware``).

    ``per_layer(policy)`` returns each layer's cost in the search metric (the total is their
    sum; a layer's cost depends on its own bits only, as every ``qsearch.hardware`` model's
    ``layer_cost``); ``metrics(policy)`` returns every metric the model computes, for the logs.
    """

    metric: str
    per_layer: Callable[[Policy], list[float]]
    metrics: Callable[[Policy], dict[str, float]]

    def total(self, policy: Policy) -> float:
        return float(sum(self.per_layer(policy)))


@dataclass
class ProjectionStats:
    """How much the budget projection (HAQ's action wall) changed the proposed policies."""

    proposals: int = 0  # policies handed to the projection under a budget
    projected: int = 0  # of which over the budget, so cut
    steps: int = 0  # bit steps taken off, over all of them

    def steps_per_tensor(self, tensors: int) -> float:
        """Bit steps taken off each searched tensor of a cut proposal, on average."""
        return self.steps / (self.projected * tensors) if self.projected else 0.0

    def summary(self, tensors: int) -> dict[str, float]:
        return {
            "proposals": self.proposals,
            "projected": self.projected,
            "steps_per_tensor": round(self.steps_per_tensor(tensors), 3),
        }

    def note(self, agent: str, tensors: int) -> str | None:
        """A warning when the projection rather than the agent set most bits: at least half
        of the proposals were over the budget and cut by at least one bit step per searched
        tensor on average; else None."""
        per_tensor = self.steps_per_tensor(tensors)
        if self.projected < 0.5 * max(self.proposals, 1) or per_tensor < 1.0:
            return None
        return (
            f"{agent}: {self.projected} of its {self.proposals} proposals were over the cost "
            f"budget, and the projection took {per_tensor:.1f} bit steps off each searched "
            "tensor of those on average: the projection, not the agent, set most bits (its "
            "result tends to a uniform policy)"
        )


@dataclass
class SearchSpace:
    """Searched layers, bit choices, pinned layers, and the cost budget.

    Args:
        w_choices / a_choices: allowed weight / activation bits, ascending.
        search_activations: search activation bits too (HAQ); else ``fixed_a_bits``.
        pin_first_last: bits of the first and last layer (not searched); None = search all.
        budget: the largest allowed cost in the oracle's metric (None = unconstrained).
    """

    model: str
    dataset: str
    inventory: list[LayerInfo]
    w_choices: list[int]
    a_choices: list[int]
    cost: CostOracle
    search_activations: bool = False
    fixed_a_bits: int = 8
    pin_first_last: int | None = 8
    budget: float | None = None
    searchable: list[int] = field(init=False)
    projection: ProjectionStats = field(init=False, default_factory=ProjectionStats)
    _cost_columns: dict[tuple[int, int], list[float]] = field(
        init=False, default_factory=dict, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        self.w_choices = sorted(set(self.w_choices))
        self.a_choices = sorted(set(self.a_choices))
        last = len(self.inventory) - 1
        pinned = {0, last} if self.pin_first_last is not None else set()
        self.searchable = [i for i in range(len(self.inventory)) if i not in pinned]
        if not self.searchable:
            raise UserError(
                f"model {self.model} has no layer left to search once the first "
                "and last are pinned (set pin_first_last=null)"
            )

    @property
    def tensors(self) -> int:
        """Searched tensors: weights of every searched layer, and activations if searched."""
        return len(self.searchable) * (2 if self.search_activations else 1)

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.inventory]

    def policy(self, w_bits: Sequence[int], a_bits: Sequence[int] | None = None) -> Policy:
        """The full policy for per-searchable-layer bits (pinned layers filled in)."""
        if len(w_bits) != len(self.searchable):
            raise ValueError(f"{len(w_bits)} weight bits for {len(self.searchable)} layers")
        if a_bits is None:
            a_bits = [self.fixed_a_bits] * len(self.searchable)
        pin = self.pin_first_last
        w_all = [pin] * len(self.inventory) if pin is not None else [0] * len(self.inventory)
        a_all = list(w_all)
        for position, index in enumerate(self.searchable):
            w_all[index], a_all[index] = int(w_bits[position]), int(a_bits[position])
        return Policy.from_bits(self.model, self.dataset, self.names, w_all, a_all)

    def searched_bits(self, policy: Policy) -> tuple[list[int], list[int]]:
        """The (weight, activation) bits of the searched layers of ``policy``."""
        w, a = policy.w_bits, policy.a_bits
        return [w[i] for i in self.searchable], [a[i] for i in self.searchable]

    def uniform(self, bits: int) -> Policy:
        """Every searched layer at ``bits`` (activations too when they are searched)."""
        n = len(self.searchable)
        return self.policy([bits] * n, [bits] * n if self.search_activations else None)

    def uniform_pair(self, w_bits: int, a_bits: int) -> Policy:
        """Every searched layer at ``w_bits`` weights and ``a_bits`` activations (whether
        or not activations are searched): a uniform WxA policy, pinned layers as pinned."""
        n = len(self.searchable)
        return self.policy([w_bits] * n, [a_bits] * n)

    def uniform_within_budget(self) -> list[tuple[int, int]]:
        """Every uniform ``(w, a)`` of the space's choices (``a`` fixed when activations are
        not searched) whose policy meets the budget, by ascending cost: the yardstick a
        mixed policy of the same cost has to beat."""
        a_choices = self.a_choices if self.search_activations else [self.fixed_a_bits]
        pairs = [(w, a) for w in self.w_choices for a in a_choices]
        fitting = [pair for pair in pairs if self.feasible(self.uniform_pair(*pair))]
        return sorted(fitting, key=lambda pair: self.cost.total(self.uniform_pair(*pair)))

    def min_policy(self) -> Policy:
        """The cheapest policy of the space: every searched layer at its smallest bits."""
        n = len(self.searchable)
        a = [self.a_choices[0]] * n if self.search_activations else None
        return self.policy([self.w_choices[0]] * n, a)

    def feasible(self, policy: Policy) -> bool:
        return self.budget is None or self.cost.total(policy) <= self.budget * (1 + 1e-9)

    def check_budget(self) -> None:
        """Raise a one-line UserError when even the cheapest policy exceeds the budget."""
        if self.budget is None:
            return
        floor = self.cost.total(self.min_policy())
        if floor > self.budget * (1 + 1e-9):
            a_bits = self.a_choices[0] if self.search_activations else self.fixed_a_bits
            raise UserError(
                f"budget {self.budget:.4g} ({self.cost.metric}) cannot be met: even "
                f"every searched layer at W{self.w_choices[0]}A{a_bits} costs {floor:.4g}"
                + ("" if self.search_activations else " (search.search_activations=false)")
            )

    def state_quant(self, policy: Policy, weighting: str = "none") -> float:
        """ReLeQ's State of Quantization: ``sum(bits_l * w_l) / (b_max * sum(w_l))``.

        ``weighting``: ``none`` (w_l = 1, the paper's formula), ``params`` or ``macs``.
        """
        w_bits, _ = self.searched_bits(policy)
        layers = [self.inventory[i] for i in self.searchable]
        weights = {
            "none": [1] * len(layers),
            "params": [lay.weight_params for lay in layers],
            "macs": [lay.macs for lay in layers],
        }[weighting]
        b_max = self.w_choices[-1]
        return sum(b * w for b, w in zip(w_bits, weights, strict=True)) / (b_max * sum(weights))

    def enforce_budget(self, policy: Policy, count: bool = True) -> Policy:
        """HAQ's projection: from the last searched layer to the first, take one step of
        bits off (activation, then weight) until the cost fits the budget. Counted in
        ``projection`` unless ``count`` is False (an imagined episode's proposal)."""
        if self.budget is None:
            return policy
        stats = self.projection if count else ProjectionStats()
        stats.proposals += 1
        if self.feasible(policy):
            return policy
        self.check_budget()  # the loop below ends: the cheapest policy fits
        stats.projected += 1
        w_bits, a_bits = self.searched_bits(policy)
        costs = self.cost.per_layer(policy)
        limit = self.budget * (1 + 1e-9)  # as in feasible(), summed in the same order
        while True:
            for position in reversed(range(len(self.searchable))):
                for bits, choices, searched in (
                    (a_bits, self.a_choices, self.search_activations),
                    (w_bits, self.w_choices, True),
                ):
                    if searched and bits[position] > choices[0]:
                        bits[position] = _step_down(bits[position], choices)
                        stats.steps += 1
                        index = self.searchable[position]
                        column = self.layer_costs(w_bits[position], a_bits[position])
                        costs[index] = column[index]
                        if float(sum(costs)) <= limit:
                            return self.policy(w_bits, a_bits)

    def layer_costs(self, w_bits: int, a_bits: int) -> list[float]:
        """Every layer's cost with each searched layer at ``(w_bits, a_bits)`` (pinned ones
        at theirs), computed once per pair and shared by the budget projection and
        :class:`~qsearch.env.optimum.LayerOptions`: searched layer ``i``'s entry is its cost
        at those bits in any policy, as a layer's cost depends on its own bits only."""
        key = (w_bits, a_bits)
        if key not in self._cost_columns:
            self._cost_columns[key] = self.cost.per_layer(self.uniform_pair(w_bits, a_bits))
        return self._cost_columns[key]


def _step_down(bits: int, choices: list[int]) -> int:
    """The next smaller choice below ``bits`` (or the smallest)."""
    lower = [c for c in choices if c < bits]
    return lower[-1] if lower else choices[0]


def parse_uniform(text: str) -> tuple[int, int]:
    """``"W3A3"`` -> ``(3, 3)``: a uniform policy's weight and activation bits."""
    match = re.fullmatch(r"[Ww](\d+)[Aa](\d+)", str(text).strip())
    if match is None:
        raise UserError(
            f"budget.uniform must look like W3A3 (weight and activation bits), got '{text}'"
        )
    return int(match.group(1)), int(match.group(2))

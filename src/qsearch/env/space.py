"""The search space: which layers are searched, their bit choices, cost and budget.

Every agent (RL or not) builds policies through a :class:`SearchSpace`, so pinning,
activation bits and the HAQ budget projection are the same for all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from qsearch.errors import UserError
from qsearch.models.inventory import LayerInfo
from qsearch.quant.policy import Policy


@dataclass
class CostOracle:
    """A hardware cost model reduced to what the search needs (see ``qsearch.hardware``).

    ``per_layer(policy)`` returns each layer's cost in the search metric (the total is their
    sum); ``metrics(policy)`` returns every metric the model computes, for the logs.
    """

    metric: str
    per_layer: Callable[[Policy], list[float]]
    metrics: Callable[[Policy], dict[str, float]]

    def total(self, policy: Policy) -> float:
        return float(sum(self.per_layer(policy)))


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

    def enforce_budget(self, policy: Policy) -> Policy:
        """HAQ's projection: from the last searched layer to the first, take one step of
        bits off (activation, then weight) until the cost fits the budget."""
        if self.budget is None or self.feasible(policy):
            return policy
        self.check_budget()  # the loop below ends: the cheapest policy fits
        w_bits, a_bits = self.searched_bits(policy)
        while True:
            for position in reversed(range(len(self.searchable))):
                for bits, choices, searched in (
                    (a_bits, self.a_choices, self.search_activations),
                    (w_bits, self.w_choices, True),
                ):
                    if searched and bits[position] > choices[0]:
                        bits[position] = _step_down(bits[position], choices)
                        candidate = self.policy(w_bits, a_bits)
                        if self.feasible(candidate):
                            return candidate


def _step_down(bits: int, choices: list[int]) -> int:
    """The next smaller choice below ``bits`` (or the smallest)."""
    lower = [c for c in choices if c < bits]
    return lower[-1] if lower else choices[0]

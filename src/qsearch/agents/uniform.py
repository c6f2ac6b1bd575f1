"""Uniform baseline: every searched layer at the same bits, for every bit choice."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from qsearch.agents import SearchContext
from qsearch.env.recorder import BudgetExhausted


@dataclass
class UniformAgent:
    """Evaluates uniform k-bit for each choice k, highest first (activations too when
    they are searched, at the nearest allowed activation bits)."""

    name: str = "uniform"
    takes_proposals: ClassVar[bool] = False  # the accuracy model's would be mixed policies

    def search(self, ctx: SearchContext) -> None:
        space = ctx.space
        for bits in reversed(space.w_choices):
            if ctx.done():
                return
            a_bits = min(space.a_choices, key=lambda a: (abs(a - bits), -a))
            n = len(space.searchable)
            policy = space.policy([bits] * n, [a_bits] * n if space.search_activations else None)
            try:
                evaluation = ctx.recorder.evaluate(policy)
            except BudgetExhausted:
                return
            ctx.recorder.end_episode(policy, evaluation.objective, 1)

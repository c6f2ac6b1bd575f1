"""Random search: policies drawn uniformly from the bit choices (Bergstra & Bengio, 2012)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qsearch.agents import SearchContext
from qsearch.env.recorder import BudgetExhausted


@dataclass
class RandomAgent:
    """Draws each searched layer's bits uniformly at random; under a budget, the draw is
    projected onto it exactly as HAQ's are (``SearchSpace.enforce_budget``).

    ``max_proposals_factor`` bounds the draws (x budget) when repeats become common.
    """

    max_proposals_factor: int = 20
    name: str = "random"

    def search(self, ctx: SearchContext) -> None:
        space = ctx.space
        rng = np.random.default_rng(ctx.seed)
        n = len(space.searchable)
        for _ in range(self.max_proposals_factor * ctx.recorder.budget):
            if ctx.done():
                return
            w_bits = rng.choice(space.w_choices, size=n).tolist()
            a_bits = rng.choice(space.a_choices, size=n).tolist()
            policy = space.enforce_budget(
                space.policy(w_bits, a_bits if space.search_activations else None)
            )
            if policy.key() in ctx.recorder.seen:
                continue  # a repeat: free, and not an episode of its own
            try:
                evaluation = ctx.recorder.evaluate(policy)
            except BudgetExhausted:
                return
            ctx.recorder.end_episode(policy, evaluation.objective, 1)

"""Bayesian optimization over per-layer bits with Optuna's TPE sampler.

The seeds mention CLIP-Q's Bayesian optimizer; TPE (Bergstra et al., 2011) is the
off-the-shelf equivalent. Each trial proposes every searched layer's bits (categorical),
the proposal is projected onto the budget like every other agent's, and the objective is
the search objective. The study lives in ``optuna.db`` in the run dir, so a resumed search
continues it.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import optuna

from qsearch.agents import SearchContext
from qsearch.env.recorder import BudgetExhausted


@dataclass
class BayesAgent:
    """Optuna TPE; ``startup_trials`` random trials before the model kicks in."""

    startup_trials: int = 10
    max_trials_factor: int = 5
    name: str = "bayes"

    def search(self, ctx: SearchContext) -> None:
        optuna.logging.set_verbosity(logging.WARNING)
        space = ctx.space
        sampler = optuna.samplers.TPESampler(seed=ctx.seed, n_startup_trials=self.startup_trials)
        study = optuna.create_study(
            study_name="search",
            direction="maximize",
            sampler=sampler,
            storage=f"sqlite:///{ctx.run_dir / 'optuna.db'}",
            load_if_exists=True,
        )

        def objective(trial: optuna.Trial) -> float:
            w_bits = [trial.suggest_categorical(f"w{i}", space.w_choices) for i in space.searchable]
            a_bits = (
                [trial.suggest_categorical(f"a{i}", space.a_choices) for i in space.searchable]
                if space.search_activations
                else None
            )
            policy = space.enforce_budget(space.policy(w_bits, a_bits))
            repeat = policy.key() in ctx.recorder.seen
            evaluation = ctx.recorder.evaluate(policy)
            if not repeat:
                ctx.recorder.end_episode(policy, evaluation.objective, 1)
            return evaluation.objective

        def stop_when_done(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            if ctx.done():
                study.stop()

        if ctx.done():
            return
        with contextlib.suppress(BudgetExhausted):
            study.optimize(
                objective,
                n_trials=self.max_trials_factor * ctx.recorder.budget,
                callbacks=[stop_when_done],
                catch=(),
            )

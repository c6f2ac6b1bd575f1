"""Every policy a search evaluates, the evaluation budget, and the best policy so far.

All agents evaluate policies through :meth:`SearchRecorder.evaluate`, so they share one
budget unit (a distinct policy evaluated; asking again for a policy this run has seen is
free), one ranking of results, and one log: ``evaluations.csv`` (every distinct policy)
and ``episodes.csv`` (every episode, or every proposal of a non-RL agent). Both are
appended line by line, so a killed search loses nothing it evaluated, and a resumed one
reloads them.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from qsearch.env.evaluator import EvalResult, standard_error
from qsearch.env.rewards import ReleqReward
from qsearch.env.space import SearchSpace
from qsearch.quant.policy import Policy


class BudgetExhausted(Exception):
    """Raised when an agent asks for a new evaluation after the budget is spent."""


@dataclass
class Evaluation:
    """One evaluated policy. ``objective`` ranks policies (see :class:`Objective`)."""

    index: int
    episode: int
    w_bits: list[int]
    a_bits: list[int]
    accuracy: float
    cost: float
    feasible: bool
    objective: float
    seconds: float
    cached: bool
    reference: bool = False
    metrics: dict[str, float] = field(default_factory=dict)
    diverged: bool = False  # its retraining diverged: accuracy is chance
    samples: int = 0  # validation samples the accuracy was measured on (0: not a sample)
    by_model: bool = False  # proposed by the recorder's proposer, not the agent

    @property
    def standard_error(self) -> float | None:
        """Standard error of :attr:`accuracy` in points (None when not a sample estimate)."""
        return standard_error(self.accuracy, self.samples)

    @property
    def rank(self) -> tuple[bool, float, float]:
        return (self.feasible, self.objective, -self.cost)


@dataclass
class Objective:
    """How policies are ranked, identical for every agent.

    With a budget: feasible policies first, then validation accuracy, then lower cost (the
    HAQ formulation). Without: ReLeQ's reward of (State of Quantization, accuracy / float
    accuracy), which trades bits against accuracy.
    """

    space: SearchSpace
    float_accuracy: float
    releq: ReleqReward

    def __call__(self, policy: Policy, accuracy: float) -> float:
        if self.space.budget is not None:
            return accuracy
        state_quant = self.space.state_quant(policy, self.releq.state_quant_weighting)
        return self.releq(state_quant, accuracy / self.float_accuracy)


EvaluationHook = Callable[["Evaluation", "SearchRecorder"], None]


class Proposer(Protocol):
    """Adds policies of its own to a search (the accuracy model: env/surrogate.py).

    Called after every charged evaluation, it returns a policy to evaluate next on the
    search's behalf when its cadence says so, else None; ``anytime=True`` (the agent has
    stopped with budget left) asks regardless of the cadence.
    """

    def __call__(self, recorder: SearchRecorder, anytime: bool = False) -> Policy | None: ...


PROPOSER_AGENT = "model"  # the agent column of a proposer's evaluations

# Columns of evaluations.csv (then the cost metrics, then _TAIL_FIELDS) and episodes.csv.
_TAIL_FIELDS = ["diverged", "val_samples", "accuracy_se"]  # added later: at the end
_POLICY_FIELDS = ["agent", "w_bits", "a_bits", "accuracy", "cost", "feasible"]
_EVAL_FIELDS = ["index", "episode", *_POLICY_FIELDS, "objective", "seconds", "cached", "reference"]
_EPISODE_FIELDS = [
    "episode",
    *_POLICY_FIELDS,
    "return",
    "steps",
    "evaluations_used",
    "wall_seconds",
]


def _bits(text: str) -> list[int]:
    return [int(b) for b in text.split()]


class SearchRecorder:
    """Evaluates policies within a budget and keeps the search's history on disk."""

    def __init__(
        self,
        space: SearchSpace,
        evaluator: Callable[[Policy], EvalResult],
        objective: Objective,
        *,
        budget: int,
        agent: str,
        run_dir: Path,
        resume: bool = False,
        on_evaluation: EvaluationHook | None = None,
        proposer: Proposer | None = None,
    ) -> None:
        self.space, self.evaluator, self.objective = space, evaluator, objective
        self.budget, self.agent, self.run_dir = budget, agent, run_dir
        self.on_evaluation, self.proposer = on_evaluation, proposer
        self._proposing = False
        self.seen: dict[str, Evaluation] = {}
        self.episodes: list[dict[str, Any]] = []
        self.best: Evaluation | None = None
        self.used = 0
        self._last_new_episode: int | None = None
        self.agent_stopped_at: int | None = None  # charged evaluations, if short of the budget
        self.stale_when_stopped = 0  # episodes without a new policy before the agent stopped
        self.started = time.perf_counter()
        self.evaluations_csv = run_dir / "evaluations.csv"
        self.episodes_csv = run_dir / "episodes.csv"
        self.metric_names = sorted(space.cost.metrics(space.min_policy()))
        if resume:
            self._reload()
        for path, fields in (
            (self.evaluations_csv, [*_EVAL_FIELDS, *self.metric_names, *_TAIL_FIELDS]),
            (self.episodes_csv, _EPISODE_FIELDS),
        ):
            if not path.is_file():
                with open(path, "w", newline="") as handle:
                    csv.writer(handle).writerow(fields)

    @property
    def exhausted(self) -> bool:
        return self.used >= self.budget

    @property
    def episode(self) -> int:
        return len(self.episodes)

    @property
    def stale_episodes(self) -> int:
        """Episodes finished since the last one that evaluated a new (charged) policy."""
        last = self._last_new_episode
        return self.episode if last is None else self.episode - last - 1

    def evaluate(self, policy: Policy, reference: bool = False) -> Evaluation:
        """Accuracy, cost and objective of ``policy``; charges the budget once per policy.

        ``reference`` evaluations (uniform baselines for the report) are not charged.

        Raises:
            BudgetExhausted: a new policy was asked for after the budget was spent.
        """
        key = policy.key()
        if key in self.seen:
            return self.seen[key]
        if not reference and self.exhausted:
            raise BudgetExhausted
        result = self.evaluator(policy)
        w_bits, a_bits = policy.w_bits, policy.a_bits
        evaluation = Evaluation(
            index=len(self.seen),
            episode=self.episode,
            w_bits=w_bits,
            a_bits=a_bits,
            accuracy=result.accuracy,
            cost=self.space.cost.total(policy),
            feasible=self.space.feasible(policy),
            objective=self.objective(policy, result.accuracy),
            seconds=result.seconds,
            cached=result.cached,
            reference=reference,
            metrics=self.space.cost.metrics(policy),
            diverged=result.diverged,
            samples=result.samples,
            by_model=self._proposing,
        )
        self.seen[key] = evaluation
        if not reference:
            self._charge(evaluation)
        self._append(
            self.evaluations_csv,
            [
                evaluation.index,
                evaluation.episode,
                PROPOSER_AGENT if evaluation.by_model else self.agent,
                " ".join(map(str, w_bits)),
                " ".join(map(str, a_bits)),
                repr(evaluation.accuracy),  # exact: a resumed search ranks as before
                repr(evaluation.cost),
                evaluation.feasible,
                repr(evaluation.objective),
                f"{evaluation.seconds:.3f}",
                evaluation.cached,
                reference,
                *(f"{evaluation.metrics[name]:.6g}" for name in self.metric_names),
                evaluation.diverged,
                evaluation.samples,
                "" if (se := evaluation.standard_error) is None else f"{se:.3f}",
            ],
        )
        if self.on_evaluation is not None:
            self.on_evaluation(evaluation, self)
        if not reference:
            self._propose()
        return evaluation

    def _propose(self) -> None:
        """Evaluate the ``proposer``'s policy, if it has one now (it is charged, but
        proposes nothing about its own evaluations)."""
        if self.proposer is None or self._proposing or self.exhausted:
            return
        self._proposing = True
        try:
            policy = self.proposer(self)
            if policy is not None:
                self.evaluate(policy)
        finally:
            self._proposing = False

    def spend_rest_on_proposer(self) -> int:
        """After the agent has stopped with budget left (it had no new policy: a converged
        RL agent), the proposer's policies, one after another, until the budget is spent or
        it has none; how many were evaluated."""
        if self.exhausted:
            return 0
        self.agent_stopped_at, self.stale_when_stopped = self.used, self.stale_episodes
        spent = 0
        while self.proposer is not None and not self.exhausted:
            self._proposing = True
            try:
                policy = self.proposer(self, anytime=True)
                if policy is None or policy.key() in self.seen:
                    break
                self.evaluate(policy)
            finally:
                self._proposing = False
            spent += 1
        return spent

    def _charge(self, evaluation: Evaluation) -> None:
        """Count a new searched evaluation against the budget; keep the best."""
        self.used += 1
        self._last_new_episode = evaluation.episode
        if self.best is None or evaluation.rank > self.best.rank:
            self.best = evaluation

    def end_episode(self, policy: Policy, episode_return: float, steps: int) -> dict[str, Any]:
        """Log a finished episode (or a non-RL agent's proposal) ending at ``policy``."""
        final = self.seen.get(policy.key())
        row = {
            "episode": self.episode,
            "agent": self.agent,
            "w_bits": " ".join(map(str, policy.w_bits)),
            "a_bits": " ".join(map(str, policy.a_bits)),
            "accuracy": final.accuracy if final else math.nan,
            "cost": self.space.cost.total(policy),
            "feasible": self.space.feasible(policy),
            "return": episode_return,
            "steps": steps,
            "evaluations_used": self.used,
            "wall_seconds": round(time.perf_counter() - self.started, 3),
        }
        self.episodes.append(row)
        self._append(self.episodes_csv, [row[name] for name in _EPISODE_FIELDS])
        return row

    def best_policy(self) -> Policy | None:
        """The best policy by the objective (feasible ones first), or None."""
        return None if self.best is None else self.policy_of(self.best)

    def policy_of(self, evaluation: Evaluation) -> Policy:
        """The policy ``evaluation`` scored."""
        return Policy.from_bits(
            self.space.model,
            self.space.dataset,
            self.space.names,
            evaluation.w_bits,
            evaluation.a_bits,
        )

    @property
    def diverged(self) -> int:
        """How many evaluations charged to the budget diverged in retraining."""
        return sum(e.diverged for e in self.seen.values() if not e.reference)

    def searched(self) -> list[Evaluation]:
        """Evaluations charged to the budget (references excluded), in order."""
        return [e for e in self.seen.values() if not e.reference]

    @staticmethod
    def _append(path: Path, row: list[Any]) -> None:
        with open(path, "a", newline="") as handle:
            csv.writer(handle).writerow(row)

    def _reload(self) -> None:
        """Restore the history of an interrupted search from its CSV files."""
        for path in (self.evaluations_csv, self.episodes_csv):
            if path.is_file() and not path.read_bytes().endswith(b"\n"):
                with open(path, "a") as handle:
                    handle.write("\n")  # end a line torn by the crash
        if self.evaluations_csv.is_file():
            with open(self.evaluations_csv, newline="") as handle:
                for row in csv.DictReader(handle):
                    try:
                        evaluation = Evaluation(
                            index=int(row["index"]),
                            episode=int(row["episode"]),
                            w_bits=_bits(row["w_bits"]),
                            a_bits=_bits(row["a_bits"]),
                            accuracy=float(row["accuracy"]),
                            cost=float(row["cost"]),
                            feasible=row["feasible"] == "True",
                            objective=float(row["objective"]),
                            seconds=float(row["seconds"]),
                            cached=row["cached"] == "True",
                            reference=row["reference"] == "True",
                            diverged=row.get("diverged") == "True",
                            samples=int(row.get("val_samples") or 0),
                            by_model=row["agent"] == PROPOSER_AGENT,
                        )
                    except (AttributeError, KeyError, TypeError, ValueError):
                        continue  # a line torn by the crash
                    policy = self.policy_of(evaluation)
                    evaluation.metrics = self.space.cost.metrics(policy)
                    self.seen[policy.key()] = evaluation
                    if not evaluation.reference:
                        self._charge(evaluation)
        if self.episodes_csv.is_file():
            with open(self.episodes_csv, newline="") as handle:
                self.episodes = [row for row in csv.DictReader(handle) if row.get("wall_seconds")]

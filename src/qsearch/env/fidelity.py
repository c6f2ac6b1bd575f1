"""How well a cheap proxy ranks policies the way the final fine-tune does.

A search only needs its evaluator to *order* policies right, so a proxy (short retraining,
BN re-estimation, a supernet) is scored by rank agreement with the fine-tuned test
accuracy of the same policies: Kendall's tau-b and Spearman's rho (scipy.stats), and the
top-k recall (how many of the k truly best policies are among the proxy's k best), the
question a search asks at its end.

The policy set (:func:`policy_set`) spreads mixed W+A policies evenly over a cost range
(e.g. uniform W2A2's to W5A5's BitOPs), so the ranking is measured where a search works.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
from scipy.stats import kendalltau, spearmanr

from qsearch.env.space import SearchSpace
from qsearch.quant.policy import Policy


@dataclass(frozen=True)
class Fidelity:
    """Rank agreement of proxy scores with ground-truth scores over the same policies."""

    kendall_tau: float
    spearman: float
    top5_recall: float
    policies: int


def top_k_recall(truth: Sequence[float], proxy: Sequence[float], k: int = 5) -> float:
    """Fraction of the ``k`` best policies by ``truth`` that are among the ``k`` best by
    ``proxy`` (ties broken by position, so the result is deterministic)."""
    if len(truth) != len(proxy):
        raise ValueError(f"{len(truth)} ground-truth scores but {len(proxy)} proxy scores")
    k = min(k, len(truth))
    if k == 0:
        raise ValueError("top-k recall needs at least one policy")
    best_true = set(np.argsort(-np.asarray(truth, np.float64), kind="stable")[:k].tolist())
    best_proxy = set(np.argsort(-np.asarray(proxy, np.float64), kind="stable")[:k].tolist())
    return len(best_true & best_proxy) / k


def fidelity(truth: Sequence[float], proxy: Sequence[float]) -> Fidelity:
    """Kendall tau-b, Spearman rho and top-5 recall of ``proxy`` against ``truth``.

    Raises:
        ValueError: fewer than 3 policies, or the two lists differ in length.
    """
    if len(truth) != len(proxy):
        raise ValueError(f"{len(truth)} ground-truth scores but {len(proxy)} proxy scores")
    if len(truth) < 3:
        raise ValueError(f"rank agreement needs at least 3 policies, got {len(truth)}")
    if np.ptp(truth) == 0 or np.ptp(proxy) == 0:
        tau = rho = 0.0  # a constant list ranks nothing
    else:
        tau, rho = kendalltau(truth, proxy).statistic, spearmanr(truth, proxy).statistic
    return Fidelity(
        kendall_tau=float(tau),
        spearman=float(rho),
        top5_recall=top_k_recall(truth, proxy, 5),
        policies=len(truth),
    )


def policy_set(
    space: SearchSpace,
    count: int,
    low: float,
    high: float,
    seed: int,
    max_tries: int = 10_000,
) -> list[Policy]:
    """``count`` distinct random mixed policies whose costs fall one in each of ``count``
    equal slices of ``[low, high]`` (so they cover the range evenly).

    Each draw gives every searched layer random bits from the space's choices, then, if
    too costly, takes bits off with HAQ's projection onto the slice's upper edge; it is
    kept if it lands inside the slice and has not been drawn before.

    Raises:
        ValueError: some slice got no policy in ``max_tries`` draws.
    """
    rng = np.random.default_rng(seed)
    edges = np.linspace(low, high, count + 1)
    n = len(space.searchable)
    a_choices = space.a_choices if space.search_activations else [space.fixed_a_bits]
    budget, chosen, seen = space.budget, [], set()
    try:
        for lo, hi in pairwise(edges):
            space.budget = float(hi)
            for _ in range(max_tries):
                w = [int(b) for b in rng.choice(space.w_choices, n)]
                a = [int(b) for b in rng.choice(a_choices, n)]
                policy = space.enforce_budget(space.policy(w, a))
                cost = space.cost.total(policy)
                if lo <= cost <= hi and policy.key() not in seen:
                    seen.add(policy.key())
                    chosen.append(policy)
                    break
            else:
                raise ValueError(
                    f"no policy with cost in [{lo:.4g}, {hi:.4g}] after {max_tries} draws"
                )
    finally:
        space.budget = budget
    return chosen

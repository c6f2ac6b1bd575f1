"""A synthetic accuracy landscape with a known optimum: the agents' training ground.

``accuracy(policy) = acc_fp - sum_l s_l * q(w_l) + r_l * q(a_l)`` over the searched layers,
with ``q(b) = 4^-b`` the power of b-bit uniform quantization noise relative to the signal
(each bit halves the step, quartering the noise power: Widrow & Kollar, *Quantization
Noise*, 2008, ch. 4) and per-layer sensitivities ``s_l`` (weights) and ``r_l``
(activations) spread over orders of magnitude, as measured Hessian sensitivities are
(HAWQ-v2, Dong et al., NeurIPS 2020, fig. 1). The landscape is additive, so the best policy
under an additive cost budget is a multiple-choice knapsack, solved exactly
(:mod:`qsearch.env.optimum`): every search on it has a regret, optimum minus found, in
accuracy points, and an agent is tuned here in seconds instead of CPU hours.

Evaluation noise (``noise_std``) mimics a validation subset: a fixed Gaussian error per
policy (the same policy always scores the same), not a fresh draw per call.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qsearch.env.evaluator import EvalResult
from qsearch.env.optimum import LayerOptions, solve_mckp
from qsearch.env.space import SearchSpace
from qsearch.errors import UserError
from qsearch.quant.policy import Policy


def noise_power(bits: np.ndarray | int, base: float = 4.0) -> np.ndarray:
    """``q(b) = 4^-b``: relative power of b-bit quantization noise (``base`` other than 4:
    a law the additive model of :mod:`qsearch.env.surrogate` does not assume)."""
    return np.power(float(base), -np.asarray(bits, dtype=np.float64))


@dataclass(frozen=True)
class SyntheticConfig:
    """``conf/evaluator/synthetic.yaml``: see that file for each field."""

    float_accuracy: float = 90.0
    drop_at_3bit: float = 5.0
    spread: float = 2.5
    activation_share: float = 0.5
    landscape_seed: int = 0
    noise_std: float = 0.0
    estimate_error: float = 0.5
    sensitivities: str | None = None
    noise_base: float = 4.0
    name: str = "synthetic"

    @classmethod
    def from_config(cls, node: Any) -> SyntheticConfig:
        values = dict(node)
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise UserError(f"unknown evaluator option(s) {sorted(unknown)} for synthetic")
        config = cls(**values)
        for key in ("drop_at_3bit", "spread"):
            if not float(getattr(config, key)) > 0:
                raise UserError(f"evaluator.{key} must be > 0, got {getattr(config, key)}")
        if not 0 <= config.activation_share < 1:
            raise UserError(
                f"evaluator.activation_share must be in [0, 1), got {config.activation_share}"
            )
        if not float(config.noise_base) > 1:
            raise UserError(f"evaluator.noise_base must be > 1, got {config.noise_base}")
        if config.noise_std < 0 or config.estimate_error < 0:
            raise UserError("evaluator.noise_std and evaluator.estimate_error must be >= 0")
        return config


def _random_sensitivities(layers: int, config: SyntheticConfig) -> tuple[np.ndarray, np.ndarray]:
    """Log-uniform sensitivities over ``spread`` decades, seeded by ``landscape_seed``."""
    rng = np.random.default_rng(config.landscape_seed)
    s = 10.0 ** rng.uniform(0.0, config.spread, layers)
    r = 10.0 ** rng.uniform(0.0, config.spread, layers)
    return s, r


def _sensitivities_from_file(
    path: str, layers: int, base: float = 4.0
) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer sensitivities from HAWQ's ``hawq_sensitivity.json`` (a real model):
    ``omega_w``/``omega_a`` rows are rescaled to the ``4^-b`` law through their 3-bit
    column when present, else their first (lowest-bit) column."""
    try:
        saved = json.loads(Path(path).read_text())
        omega_w = np.asarray(saved["omega_w"] if "omega_w" in saved else saved["omega"], float)
        omega_a = np.asarray(saved.get("omega_a", omega_w), float)
        w_bits, a_bits = saved["bits"] if "bits" in saved else saved["w_bits"], saved.get("a_bits")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"evaluator.sensitivities={path}: cannot read it ({exc})") from exc
    if omega_w.shape[0] != layers:
        raise UserError(
            f"evaluator.sensitivities={path} has {omega_w.shape[0]} layers, the search {layers}"
        )
    a_bits = a_bits or w_bits

    def at_law(omega: np.ndarray, bits: list[int]) -> np.ndarray:
        column = bits.index(3) if 3 in bits else 0
        return np.maximum(omega[:, column], 1e-12) / noise_power(bits[column], base)

    return at_law(omega_w, list(w_bits)), at_law(omega_a, list(a_bits))


class SyntheticLandscape:
    """An evaluator (``Policy -> EvalResult``) over ``space`` with a known optimum."""

    def __init__(self, space: SearchSpace, config: SyntheticConfig) -> None:
        self.space, self.config = space, config
        layers = len(space.searchable)
        if config.sensitivities:
            s, r = _sensitivities_from_file(config.sensitivities, layers, config.noise_base)
        else:
            s, r = _random_sensitivities(layers, config)
        # with activations fixed, the whole loss is on the weights
        share = config.activation_share if space.search_activations else 0.0
        # scale so that every searched layer at W3A3 loses drop_at_3bit points
        s = s / s.sum() * (1 - share) * config.drop_at_3bit / self.q(3)
        r = r / r.sum() * share * config.drop_at_3bit / self.q(3)
        self.s, self.r = s, r
        self.float_accuracy = float(config.float_accuracy)
        self.calls = 0
        self._optimum: tuple[float, Policy] | None = None

    def q(self, bits: np.ndarray | int) -> np.ndarray:
        """The landscape's noise law, ``noise_base^-b``."""
        return noise_power(bits, self.config.noise_base)

    def true_accuracy(self, policy: Policy) -> float:
        """The noiseless accuracy of ``policy`` in %."""
        w, a = self.space.searched_bits(policy)
        loss = self.s @ self.q(np.array(w)) + self.r @ self.q(np.array(a))
        return self.float_accuracy - float(loss)

    def _noise(self, policy: Policy) -> float:
        if self.config.noise_std == 0:
            return 0.0
        digest = hashlib.sha256(f"{self.config.landscape_seed}:{policy.key()}".encode())
        rng = np.random.default_rng(int.from_bytes(digest.digest()[:8], "little"))
        return float(rng.normal(0.0, self.config.noise_std))

    def __call__(self, policy: Policy) -> EvalResult:
        self.calls += 1
        return EvalResult(self.true_accuracy(policy) + self._noise(policy), 0.0, cached=False)

    def optimum(self) -> tuple[float, Policy]:
        """The most accurate policy within the space's budget (exact), and its accuracy."""
        if self._optimum is None:
            if self.space.budget is None:
                raise UserError(
                    "evaluator=synthetic needs a cost budget to have an optimum: add "
                    "budget.cost_fraction (e.g. 0.15 of uniform 8-bit) or budget.uniform=W3A3"
                )
            table = LayerOptions.of(self.space)
            values = table.additive_values(self.s, self.r, self.q)
            choice = solve_mckp(values, table.cost, self.space.budget - table.fixed_cost)
            policy = table.policy(self.space, choice)
            self._optimum = (self.true_accuracy(policy), policy)
        return self._optimum

    def regret(self, policy: Policy) -> float:
        """Optimum accuracy minus ``policy``'s true accuracy, in points (>= 0 if feasible)."""
        return self.optimum()[0] - self.true_accuracy(policy)

    def estimate(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """A sensitivity estimate for HAWQ: ``(omega_w, omega_a)`` at the space's choices,
        each sensitivity off by a log-normal factor of sigma ``estimate_error`` (seeded by
        the search's seed), standing in for Hutchinson's estimation error."""
        rng = np.random.default_rng([self.config.landscape_seed, seed])
        error = self.config.estimate_error
        s = self.s * rng.lognormal(0.0, error, self.s.shape) if error else self.s
        r = self.r * rng.lognormal(0.0, error, self.r.shape) if error else self.r
        omega_w = np.outer(s, self.q(np.array(self.space.w_choices)))
        omega_a = np.outer(r, self.q(np.array(self.space.a_choices)))
        return omega_w, omega_a

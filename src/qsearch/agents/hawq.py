"""Hessian-aware baseline (HAWQ-v2, Dong et al., NeurIPS 2020), weights and activations.

Sensitivities (HAWQ-v2): each searched layer's sensitivity to ``b``-bit weights is
``Omega_w[l, b] = Tr(H_l) / n_l * ||Q_b(W_l) - W_l||^2``, with the Hessian trace of the loss
w.r.t. the layer's weights estimated by Hutchinson's method (``E[v^T H v]`` over Rademacher
``v``). When activations are searched, HAWQ-v2's activation sensitivity is measured the same
way for the layer's *input* activation ``x`` (what its activation quantizer perturbs):
``Omega_a[l, a] = Tr(H_x) / numel(x) * ||Q_a(x) - x||^2``, with ``x`` one batch's input tensor
(captured by forward pre-hooks) and ``Q_a`` a fresh activation quantizer initialised on the
first batch, as at evaluation. Both are second-order estimates of the loss increase (times
2), so they add up on one scale. Under the synthetic evaluator the context supplies
``(Omega_w, Omega_a)`` instead (:attr:`SearchContext.sensitivities`).

Candidates (ours; HAWQ-v2 picks the one least-sensitivity policy of its Pareto frontier): the
agent spends the evaluation budget on distinct policies. With a cost budget, each is an exact
multiple-choice knapsack solution (:mod:`qsearch.env.optimum`) maximising ``-sum_l
(Omega_w[l, w_l] + alpha * Omega_a[l, a_l])`` at budgets ``t x budget`` (``t <= 1``) and
activation weights ``alpha`` over a geometric range (the relative scale of the two estimates
is uncertain); without one, the Lagrangian relaxation ``argmin_k Omega + mu * cost`` over a
sweep of ``mu``. If that gives fewer policies than the evaluation budget, single-step moves
(one layer a step up, another a step down, within the budget) around the best fill it. All
are evaluated in order of predicted sensitivity (``alpha = 1``), least first.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qsearch.agents import SearchContext
from qsearch.data import TensorLoader
from qsearch.env.optimum import LayerOptions, solve_mckp
from qsearch.env.recorder import BudgetExhausted
from qsearch.env.space import SearchSpace
from qsearch.utils.io import write_json

SENSITIVITY_FILE = "hawq_sensitivity.json"
Batch = tuple[torch.Tensor, torch.Tensor]
Choice = tuple[int, ...]  # an option index (into LayerOptions.options) per searched layer
LossAndTensors = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, list[torch.Tensor]]]


def _hutchinson(
    loss_and_tensors: LossAndTensors, batches: list[Batch], samples: int, seed: int
) -> np.ndarray:
    """Mean ``v^T H v`` (Rademacher ``v``, ``samples`` per batch) for the Hessian of the loss
    w.r.t. each tensor: its trace (cross terms between tensors vanish in expectation)."""
    generator = torch.Generator().manual_seed(seed)
    traces = np.zeros(0)
    for images, labels in batches:
        loss, tensors = loss_and_tensors(images, labels)
        grads = torch.autograd.grad(loss, tensors, create_graph=True)
        total = np.zeros(len(tensors))
        for _ in range(samples):
            vs = [
                torch.randint(0, 2, t.shape, generator=generator).float().mul_(2).sub_(1).to(t)
                for t in tensors
            ]
            hvs = torch.autograd.grad(grads, tensors, grad_outputs=vs, retain_graph=True)
            total += np.array([float((hv * v).sum()) for hv, v in zip(hvs, vs, strict=True)])
        traces = total if traces.size == 0 else traces + total
    return traces / (samples * len(batches))


def _cross_entropy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    device = next(model.parameters()).device
    return F.cross_entropy(model(images.to(device).float()), labels.to(device))


def hutchinson_traces(
    model: nn.Module,
    batches: list[Batch],
    layer_names: list[str],
    samples: int,
    seed: int,
) -> list[float]:
    """``Tr(H_l)`` of the cross-entropy loss w.r.t. each named layer's weight (fp32),
    HAWQ-v2's weight sensitivity."""
    model = model.float().eval()
    params = [model.get_submodule(name).weight for name in layer_names]

    def loss_and_weights(
        images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return _cross_entropy(model, images, labels), params

    return _hutchinson(loss_and_weights, batches, samples, seed).tolist()


def activation_traces(
    model: nn.Module,
    batches: list[Batch],
    layer_names: list[str],
    samples: int,
    seed: int,
) -> list[float]:
    """``Tr(H_x)`` of the cross-entropy loss w.r.t. each named layer's input ``x`` (one
    batch's tensor, as that layer alone sees it: a clone, so a shortcut or an in-place op
    elsewhere is not perturbed), HAWQ-v2's activation sensitivity."""
    model = model.float().eval()
    captured: dict[str, torch.Tensor] = {}

    def capture(name: str) -> Callable[[nn.Module, tuple], tuple]:
        def hook(_module: nn.Module, args: tuple) -> tuple:
            x = args[0].clone()
            captured[name] = x if x.requires_grad else x.requires_grad_()
            return (captured[name], *args[1:])

        return hook

    def loss_and_inputs(
        images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        captured.clear()
        loss = _cross_entropy(model, images, labels)
        return loss, [captured[name] for name in layer_names]

    handles = [
        model.get_submodule(name).register_forward_pre_hook(capture(name)) for name in layer_names
    ]
    try:
        return _hutchinson(loss_and_inputs, batches, samples, seed).tolist()
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def weight_errors(
    model: nn.Module, layer_names: list[str], bits: list[int], make: Callable[..., nn.Module]
) -> np.ndarray:
    """``||Q_b(W) - W||^2 / numel(W)`` of each named layer's weight at each of ``bits``
    (rows: layers); ``make("weight", b, channels=...)`` builds the quantizer."""
    errors = np.zeros((len(layer_names), len(bits)))
    for row, name in enumerate(layer_names):
        weight = model.get_submodule(name).weight.detach().float()
        for column, b in enumerate(bits):
            quantizer = make("weight", b, channels=weight.shape[0]).to(weight.device)
            errors[row, column] = float((quantizer(weight) - weight).pow(2).mean())
    return errors


@torch.no_grad()
def activation_errors(
    model: nn.Module,
    batches: list[Batch],
    layer_names: list[str],
    bits: list[int],
    make: Callable[[int], nn.Module],
) -> np.ndarray:
    """``||Q_a(x) - x||^2 / numel(x)`` of each named layer's input at each of ``bits``
    (rows: layers), averaged over batches; ``make(b)`` builds a ``b``-bit activation quantizer,
    initialised on the first batch it sees (as at evaluation: see ``quant.layers.calibrate``)."""
    model = model.float().eval()
    device = next(model.parameters()).device
    quantizers = [[make(b).to(device) for b in bits] for _ in layer_names]
    errors = np.zeros((len(layer_names), len(bits)))

    def measure(row: int) -> Callable[[nn.Module, tuple], None]:
        def hook(_module: nn.Module, args: tuple) -> None:
            x = args[0].float()
            for column, quantizer in enumerate(quantizers[row]):
                errors[row, column] += float((quantizer(x) - x).pow(2).mean())

        return hook

    handles = [
        model.get_submodule(name).register_forward_pre_hook(measure(row))
        for row, name in enumerate(layer_names)
    ]
    try:
        for images, _ in batches:
            model(images.to(device).float())
    finally:
        for handle in handles:
            handle.remove()
    return errors / len(batches)


def read_sensitivities(
    path: Path, space: SearchSpace
) -> tuple[np.ndarray, np.ndarray | None] | None:
    """``(Omega_w, Omega_a)`` saved in ``path`` when they fit ``space`` (``Omega_a`` None when
    activations are not searched), else None."""
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    layers = len(space.searchable)
    omega_w = np.asarray(saved.get("omega_w", saved.get("omega")), dtype=np.float64)
    if omega_w.shape != (layers, len(space.w_choices)):
        return None
    if not space.search_activations:
        return omega_w, None
    omega_a = np.asarray(saved.get("omega_a"), dtype=np.float64)
    if omega_a.shape != (layers, len(space.a_choices)):
        return None
    return omega_w, omega_a


def _neighbour(choices: list[int], bits: int, step: int) -> int | None:
    """The choice ``step`` (+1 / -1) places from ``bits`` in ``choices``, or None."""
    position = choices.index(bits) + step if bits in choices else -1
    return choices[position] if 0 <= position < len(choices) else None


def _steps(
    table: LayerOptions, w_choices: list[int], a_choices: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """``(up, down)``: arrays ``(options, 2)`` of the option one weight (column 0) or one
    activation (column 1) step up (down) from each option; -1 where there is none."""
    index = {option: k for k, option in enumerate(table.options)}
    up = np.full((len(table.options), 2), -1)
    down = np.full((len(table.options), 2), -1)
    for k, (w, a) in enumerate(table.options):
        for target, step in ((up, 1), (down, -1)):
            target[k, 0] = index.get((_neighbour(w_choices, w, step), a), -1)
            target[k, 1] = index.get((w, _neighbour(a_choices, a, step)), -1)
    return up, down


def _moves(
    seed: Choice,
    sens: np.ndarray,
    cost: np.ndarray,
    steps: tuple[np.ndarray, np.ndarray],
    slack: float,
) -> Iterator[Choice]:
    """Single-step moves from ``seed``: one layer a step up and another a step down, or a
    single step, within ``slack`` more cost; least added sensitivity first (ours)."""
    k = np.array(seed)

    def step_list(table: np.ndarray) -> tuple[np.ndarray, ...]:
        new = table[k]
        layer, dim = np.nonzero(new >= 0)
        moved = new[layer, dim]
        d_sens = sens[layer, moved] - sens[layer, k[layer]]
        d_cost = cost[layer, moved] - cost[layer, k[layer]]
        # the last entry is "no move", so that single steps are pairs with it
        return tuple(
            np.append(x, fill)
            for x, fill in zip((layer, moved, d_sens, d_cost), (-1, -1, 0, 0), strict=True)
        )

    up_layer, up_k, up_sens, up_cost = step_list(steps[0])
    down_layer, down_k, down_sens, down_cost = step_list(steps[1])
    d_cost = up_cost[:, None] + down_cost[None, :]
    ok = (up_layer[:, None] != down_layer[None, :]) & (d_cost <= slack)
    i, j = np.nonzero(ok)
    for pick in np.argsort((up_sens[:, None] + down_sens[None, :])[i, j], kind="stable"):
        choice = k.copy()
        for layer, moved in (
            (up_layer[i[pick]], up_k[i[pick]]),
            (down_layer[j[pick]], down_k[j[pick]]),
        ):
            if layer >= 0:
                choice[layer] = moved
        yield tuple(choice.tolist())


@dataclass
class HawqAgent:
    """HAWQ-v2 sensitivities (weights, and activations when searched) and the distinct
    policies of least predicted sensitivity under the budget, evaluated within the budget.

    Args:
        hutchinson_samples / hessian_batches / batch_size: Hutchinson's estimate.
        multipliers: Lagrangian multipliers swept when there is no cost budget.
        budget_fractions / min_budget_fraction: knapsack budgets ``t x budget``, ``t`` from 1
            down to ``min_budget_fraction`` in that many steps.
        activation_scales / activation_scale_range: weights ``alpha`` of ``Omega_a`` in the
            knapsack values, geometric over ``[1 / range, range]`` (searched activations).
        moves_per_candidate: single-step moves added around each candidate, best first,
            while there are fewer candidates than the evaluation budget.
    """

    hutchinson_samples: int = 32
    hessian_batches: int = 2
    batch_size: int = 128
    multipliers: int = 200
    budget_fractions: int = 6
    min_budget_fraction: float = 0.8
    activation_scales: int = 5
    activation_scale_range: float = 10.0
    moves_per_candidate: int = 8
    name: str = "hawq"

    def search(self, ctx: SearchContext) -> None:
        space = ctx.space
        omega_w, omega_a = self.sensitivities(ctx)
        table = LayerOptions.of(space)
        sens_w, sens_a = _option_sensitivities(space, table, omega_w, omega_a)
        for choice in self.candidates(space, table, sens_w, sens_a, ctx.recorder.budget):
            if ctx.done():
                return
            policy = table.policy(space, choice)
            if policy.key() in ctx.recorder.seen:  # evaluated before a resume
                continue
            try:
                evaluation = ctx.recorder.evaluate(policy)
            except BudgetExhausted:
                return
            ctx.recorder.end_episode(policy, evaluation.objective, 1)

    def candidates(
        self,
        space: SearchSpace,
        table: LayerOptions,
        sens_w: np.ndarray,
        sens_a: np.ndarray,
        target: int,
    ) -> list[Choice]:
        """Distinct feasible choices (option index per searched layer), least predicted
        sensitivity ``sum_l sens_w + sens_a`` first; at least ``target`` where the space
        has that many within reach of single-step moves (ours)."""
        alphas = self._alphas() if space.search_activations else [1.0]
        if space.budget is None:
            found = self._lagrangian(table, sens_w, sens_a, alphas)
            limit = np.inf
        else:
            space.check_budget()  # a one-line UserError when nothing fits
            found = self._knapsacks(space.budget, table, sens_w, sens_a, alphas)
            limit = space.budget * (1 + 1e-9)
        sens = sens_w + sens_a
        rows = np.arange(sens.shape[0])
        predicted = {
            c: float(sens[rows, c].sum()) for c in found if table.policy_cost(list(c)) <= limit
        }
        self._add_moves(predicted, space, table, sens, limit, target)
        return sorted(predicted, key=predicted.__getitem__)

    def _add_moves(
        self,
        predicted: dict[Choice, float],
        space: SearchSpace,
        table: LayerOptions,
        sens: np.ndarray,
        limit: float,
        target: int,
    ) -> None:
        """Add single-step moves around the best candidates not yet expanded (at most
        ``moves_per_candidate`` each, least added sensitivity first) until ``predicted``
        holds ``target`` choices or no candidate is left to expand."""
        rows = np.arange(sens.shape[0])
        steps = _steps(table, space.w_choices, space.a_choices)
        expanded: set[Choice] = set()
        while len(predicted) < target:
            ranked = sorted(predicted, key=predicted.__getitem__)
            seed = next((c for c in ranked if c not in expanded), None)
            if seed is None:
                return
            expanded.add(seed)
            added = 0
            slack = limit - table.policy_cost(list(seed))
            for choice in _moves(seed, sens, table.cost, steps, slack):
                if choice not in predicted:
                    predicted[choice] = float(sens[rows, choice].sum())
                    added += 1
                if added >= self.moves_per_candidate or len(predicted) >= target:
                    break

    def _alphas(self) -> list[float]:
        """Weights of ``Omega_a``: geometric over ``[1 / range, range]``, 1 always among them."""
        if self.activation_scales <= 1:
            return [1.0]
        exponents = np.linspace(-1.0, 1.0, self.activation_scales)
        return sorted({1.0, *(self.activation_scale_range**exponents).tolist()})

    def _knapsacks(
        self,
        budget: float,
        table: LayerOptions,
        sens_w: np.ndarray,
        sens_a: np.ndarray,
        alphas: list[float],
    ) -> list[Choice]:
        """Exact knapsack optima at budgets ``t x budget`` and activation weights ``alpha``."""
        found: list[Choice] = []
        for t in np.linspace(1.0, self.min_budget_fraction, max(self.budget_fractions, 1)):
            for alpha in alphas:
                values = -(sens_w + alpha * sens_a)
                values = values / max(float(np.abs(values).max()), 1e-300)  # HiGHS's absolute gap
                try:
                    found.append(
                        tuple(solve_mckp(values, table.cost, t * budget - table.fixed_cost))
                    )
                except ValueError:  # below the cheapest policy
                    continue
        return list(dict.fromkeys(found))

    def _lagrangian(
        self, table: LayerOptions, sens_w: np.ndarray, sens_a: np.ndarray, alphas: list[float]
    ) -> list[Choice]:
        """Without a cost budget: ``argmin_k sens[l, k] + mu * cost[l, k]`` per layer, over a
        sweep of the multiplier ``mu`` (each exact for its own cost level)."""
        found: list[Choice] = []
        for alpha in alphas:
            sens = sens_w + alpha * sens_a
            scale = float(np.abs(sens).max() / max(np.abs(table.cost).max(), 1e-30))
            for mu in [0.0, *np.geomspace(1e-6, 1e6, self.multipliers) * scale]:
                found.append(tuple(np.argmin(sens + mu * table.cost, axis=1).tolist()))
        return list(dict.fromkeys(found))

    def sensitivities(self, ctx: SearchContext) -> tuple[np.ndarray, np.ndarray | None]:
        """``(Omega_w, Omega_a)``: rows searched layers, columns ``w_choices`` / ``a_choices``
        (``Omega_a`` None when activations are not searched). From the evaluator's estimate
        when the context has one; else measured and cached in the run dir (read on resume)."""
        space = ctx.space
        if ctx.sensitivities is not None:
            omega_w, omega_a = ctx.sensitivities()
            if not space.search_activations:
                return np.asarray(omega_w, np.float64), None
            return np.asarray(omega_w, np.float64), np.asarray(omega_a, np.float64)
        path = ctx.run_dir / SENSITIVITY_FILE
        cached = read_sensitivities(path, space) if ctx.resume else None
        return cached if cached is not None else self._measure(ctx, path)

    def _measure(self, ctx: SearchContext, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
        """HAWQ-v2's sensitivities of ``ctx.float_model``, written to ``path``."""
        space, model = ctx.space, ctx.float_model
        if model is None or ctx.data is None:
            raise ValueError("HAWQ needs the float model and data (or the evaluator's estimate)")
        names = [space.inventory[i].name for i in space.searchable]
        loader = TensorLoader(
            ctx.data.train, ctx.data.info, self.batch_size, shuffle=True, seed=ctx.seed
        )
        batches = [batch for _, batch in zip(range(self.hessian_batches), loader, strict=False)]
        traces = hutchinson_traces(model, batches, names, self.hutchinson_samples, ctx.seed)
        weight_mse = weight_errors(model, names, space.w_choices, ctx.spec.make)
        omega_w = np.array(traces)[:, None] * weight_mse  # Tr/n x total squared error
        record = {
            "layers": names,
            "w_bits": space.w_choices,
            "weight_traces": traces,
            "omega_w": omega_w.tolist(),
        }
        omega_a = None
        if space.search_activations:
            a_traces = activation_traces(model, batches, names, self.hutchinson_samples, ctx.seed)
            errors = activation_errors(
                model, batches, names, space.a_choices, lambda b: ctx.spec.make("activation", b)
            )
            omega_a = np.array(a_traces)[:, None] * errors  # Tr/numel x total squared error
            record |= {
                "a_bits": space.a_choices,
                "activation_traces": a_traces,
                "activation_mse": errors.tolist(),
                "omega_a": omega_a.tolist(),
            }
        write_json(path, record)
        return omega_w, omega_a


def _option_sensitivities(
    space: SearchSpace, table: LayerOptions, omega_w: np.ndarray, omega_a: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """``Omega_w`` and ``Omega_a`` at each (w, a) option of ``table``: arrays (layers, options);
    zero activation sensitivity when activations are not searched (fixed bits)."""
    w_index = [space.w_choices.index(w) for w, _ in table.options]
    sens_w = omega_w[:, w_index]
    if omega_a is None or not space.search_activations:
        return sens_w, np.zeros_like(sens_w)
    return sens_w, omega_a[:, [space.a_choices.index(a) for _, a in table.options]]

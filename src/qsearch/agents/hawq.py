"""Hessian-aware baseline (HAWQ-v2, Dong et al., NeurIPS 2020).

Each layer's sensitivity to ``b``-bit weights is ``Omega_l(b) = Tr(H_l) / n_l *
||Q_b(W_l) - W_l||^2``, with the Hessian trace of the loss w.r.t. the layer's weights
estimated by Hutchinson's method (``E[v^T H v]`` over Rademacher ``v``). Candidate policies
come from a Lagrangian relaxation of the budgeted problem — for each multiplier ``mu``
every layer picks ``argmin_b Omega_l(b) + mu * cost_l(b)`` (exact for that cost level,
since both terms are sums over layers) — and are evaluated in order of total sensitivity,
cheapest-feasible first, within the evaluation budget. Activations are not part of
HAWQ's weight sensitivity: they stay at their largest choice (or the fixed bits).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qsearch.agents import SearchContext
from qsearch.data import TensorLoader
from qsearch.env.recorder import BudgetExhausted
from qsearch.quant.policy import Policy


def hutchinson_traces(
    model: nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    layer_names: list[str],
    samples: int,
    seed: int,
) -> list[float]:
    """``Tr(H_l)`` of the cross-entropy loss w.r.t. each named layer's weight (fp32)."""
    generator = torch.Generator().manual_seed(seed)
    model = model.float().eval()
    params = [model.get_submodule(name).weight for name in layer_names]
    traces = np.zeros(len(params))
    for images, labels in batches:
        loss = F.cross_entropy(model(images.float()), labels)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        for _ in range(samples):
            vs = [
                torch.randint(0, 2, p.shape, generator=generator).float().mul_(2).sub_(1)
                for p in params
            ]
            hvs = torch.autograd.grad(grads, params, grad_outputs=vs, retain_graph=True)
            traces += np.array([float((hv * v).sum()) for hv, v in zip(hvs, vs, strict=True)])
    return (traces / (samples * len(batches))).tolist()


@dataclass
class HawqAgent:
    """HAWQ-v2 sensitivities + Lagrangian candidates, evaluated within the budget."""

    hutchinson_samples: int = 32
    hessian_batches: int = 2
    batch_size: int = 128
    multipliers: int = 200
    name: str = "hawq"

    def search(self, ctx: SearchContext) -> None:
        space = ctx.space
        layers = [space.inventory[i] for i in space.searchable]
        sensitivity = self._sensitivities(ctx, [layer.name for layer in layers])
        n = len(layers)
        a_fixed = [space.a_choices[-1]] * n if space.search_activations else None
        cost = np.array(
            [
                [
                    space.cost.per_layer(space.policy([b] * n, a_fixed))[index]
                    for b in space.w_choices
                ]
                for index in space.searchable
            ]
        )
        candidates: dict[str, tuple[float, Policy]] = {}
        scale = float(np.abs(sensitivity).max() / max(np.abs(cost).max(), 1e-30))
        for mu in [0.0, *np.geomspace(1e-6, 1e6, self.multipliers) * scale]:
            choice = np.argmin(sensitivity + mu * cost, axis=1)
            w_bits = [space.w_choices[c] for c in choice]
            policy = space.enforce_budget(space.policy(w_bits, a_fixed))
            chosen = [space.w_choices.index(b) for b in space.searched_bits(policy)[0]]
            total = float(sensitivity[np.arange(n), chosen].sum())
            candidates.setdefault(policy.key(), (total, policy))
        for _, policy in sorted(candidates.values(), key=lambda item: item[0]):
            if ctx.done():
                return
            try:
                evaluation = ctx.recorder.evaluate(policy)
            except BudgetExhausted:
                return
            ctx.recorder.end_episode(policy, evaluation.objective, 1)

    def _sensitivities(self, ctx: SearchContext, names: list[str]) -> np.ndarray:
        """``Omega[l, k]`` for searched layer ``l`` at ``w_choices[k]``; cached in the run dir."""
        path = ctx.run_dir / "hawq_sensitivity.json"
        if ctx.resume and path.is_file():
            return np.array(json.loads(path.read_text())["omega"])
        loader = TensorLoader(
            ctx.data.train, ctx.data.info, self.batch_size, shuffle=True, seed=ctx.seed
        )
        batches = [batch for _, batch in zip(range(self.hessian_batches), loader, strict=False)]
        model = ctx.float_model
        traces = hutchinson_traces(model, batches, names, self.hutchinson_samples, ctx.seed)
        omega = np.zeros((len(names), len(ctx.space.w_choices)))
        for row, name in enumerate(names):
            weight = model.get_submodule(name).weight.detach().float()
            for column, bits in enumerate(ctx.space.w_choices):
                quantizer = ctx.spec.make("weight", bits, channels=weight.shape[0])
                with torch.no_grad():
                    error = (quantizer(weight) - weight).pow(2).sum().item()
                omega[row, column] = traces[row] / weight.numel() * error
        path.write_text(
            json.dumps(
                {
                    "layers": names,
                    "bits": ctx.space.w_choices,
                    "traces": traces,
                    "omega": omega.tolist(),
                },
                indent=2,
            )
        )
        return omega

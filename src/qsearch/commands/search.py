"""``qsearch search``: find a per-layer bit policy with an RL agent or a baseline."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.table import Table

from qsearch.agents import SearchContext, run_search
from qsearch.commands._common import console, load_trained_float, run_dir
from qsearch.config import instantiate_checked
from qsearch.data import Augment, DataSplits
from qsearch.env.cost import cost_oracle
from qsearch.env.evaluator import PolicyEvaluator, RetrainConfig
from qsearch.env.recorder import Evaluation, Objective, SearchRecorder
from qsearch.env.rewards import HaqReward, ReleqReward
from qsearch.env.space import SearchSpace, parse_uniform
from qsearch.env.surrogate import ModelProposals
from qsearch.env.synthetic import SyntheticConfig, SyntheticLandscape
from qsearch.errors import UserError
from qsearch.quant.layers import QuantizerSpec
from qsearch.quant.policy import Policy
from qsearch.report.figures import bits_figure, pareto_figure
from qsearch.report.live import SearchMonitor, bits_text
from qsearch.setup import Setup
from qsearch.supernet.evaluator import SupernetEvaluator, locate_supernet, supernet_evaluator
from qsearch.utils.io import write_json

log = logging.getLogger(__name__)


def build_space(cfg: DictConfig, inventory: list[Any]) -> SearchSpace:
    """The search space and its budget; an unreachable budget fails here, before training."""
    search = cfg.search
    oracle = cost_oracle(cfg.hardware, inventory)
    space = SearchSpace(
        model=str(cfg.model.name),
        dataset=str(cfg.dataset.name),
        inventory=inventory,
        w_choices=list(search.w_bits),
        a_choices=list(search.a_bits),
        cost=oracle,
        search_activations=bool(search.search_activations),
        fixed_a_bits=int(search.fixed_a_bits),
        pin_first_last=search.pin_first_last,
    )
    for bits in (*space.w_choices, *space.a_choices):
        if not 1 <= bits <= 8:
            raise UserError(f"search bit choices must lie in 1..8, got {bits}")
    spec = QuantizerSpec.from_config(cfg.quantizer)
    for bits in space.w_choices:
        spec.make("weight", bits)  # a UserError if the quantizer cannot do these bits
    for bits in space.a_choices if space.search_activations else [space.fixed_a_bits]:
        spec.make("activation", bits)
    space.budget = cost_budget(cfg.budget, space)
    if space.budget is not None:
        space.check_budget()
    return space


def cost_budget(budget: DictConfig, space: SearchSpace) -> float | None:
    """The cost limit in the space's metric: ``budget.cost_fraction`` x uniform 8-bit's
    cost, or the cost of the uniform policy ``budget.uniform`` (W3A3); None for neither."""
    fraction, uniform = budget.cost_fraction, budget.get("uniform")
    if fraction is not None and uniform is not None:
        raise UserError(
            f"set one cost budget, not both: budget.cost_fraction={fraction} and "
            f"budget.uniform={uniform}"
        )
    if uniform is not None:
        w_bits, a_bits = parse_uniform(uniform)
        for bits in (w_bits, a_bits):
            if not 1 <= bits <= 8:
                raise UserError(f"budget.uniform bits must lie in 1..8, got {uniform}")
        return space.cost.total(space.uniform_pair(w_bits, a_bits))
    if fraction is None:
        return None
    if float(fraction) <= 0:
        raise UserError(f"budget.cost_fraction must be positive, got {fraction}")
    return float(fraction) * space.cost.total(_uniform8(space))


def budget_label(budget: DictConfig) -> str:
    """The cost budget as the user set it: ``0.36 x 8-bit`` or ``uniform W3A3's``."""
    if budget.get("uniform") is not None:
        return f"uniform {budget.uniform}'s"
    return f"{budget.cost_fraction} x 8-bit"


def retrain_evaluator(setup: Setup) -> PolicyEvaluator:
    """``evaluator=retrain``: short retraining from ``setup``'s float weights (load them
    first), cached on disk."""
    cfg = setup.cfg
    return PolicyEvaluator(
        setup.float_model,
        setup.data,
        setup.runtime,
        setup.spec,
        RetrainConfig.from_config(cfg.evaluator),
        seed=int(cfg.seed),
        augment=Augment.from_config(cfg.dataset.get("augment")),
        cache_dir=Path(cfg.cache_dir) / "evals",
        context={
            "model": cfg.model.name,
            "dataset": cfg.dataset.name,
            "quantizer": OmegaConf.to_container(cfg.quantizer, resolve=True),
        },
    )


def _uniform8(space: SearchSpace) -> Policy:
    """Uniform 8-bit weights and activations: the reference every cost is compared to."""
    return space.uniform_pair(8, 8)


def run(cfg: DictConfig) -> None:
    """Search, then write policy.yaml, episodes.csv, evaluations.csv and the figures."""
    out = run_dir()
    resume = cfg.resume is not None
    setup = Setup.from_config(cfg)
    space = build_space(cfg, setup.inventory)
    reward = instantiate_checked(cfg.reward)
    agent = instantiate_checked(cfg.agent, _convert_="all")
    if isinstance(reward, HaqReward) and space.budget is None:
        raise UserError(
            f"reward=haq needs a budget: add budget.cost_fraction=0.5 (a fraction "
            f"of uniform 8-bit {space.cost.metric}) or budget.uniform=W4A4"
        )

    scorer = _build_scorer(cfg, space, setup)
    evaluator, float_accuracy = scorer.evaluator, scorer.float_accuracy
    releq = reward if isinstance(reward, ReleqReward) else ReleqReward()
    reference_cost = space.cost.total(_uniform8(space))
    monitor = SearchMonitor(
        agent.name,
        int(cfg.budget.evaluations),
        space.cost.metric,
        reference_cost,
        float_accuracy,
        console=console,
    )
    recorder = SearchRecorder(
        space,
        evaluator,
        Objective(space, float_accuracy, releq),
        budget=int(cfg.budget.evaluations),
        agent=agent.name,
        run_dir=out,
        resume=resume,
        on_evaluation=monitor.update,
        proposer=ModelProposals(space, int(cfg.search.model_every), int(cfg.search.model_after)),
    )
    ctx = SearchContext(
        space=space,
        recorder=recorder,
        float_accuracy=float_accuracy,
        reward=reward,
        run_dir=out,
        seed=int(cfg.seed),
        resume=resume,
        float_model=setup.float_model,
        data=scorer.data,
        spec=setup.spec,
        runtime=setup.runtime,
        max_episodes=cfg.search.max_episodes,
        patience=cfg.search.patience,
        sensitivities=(
            (lambda: evaluator.estimate(int(cfg.seed)))
            if isinstance(evaluator, SyntheticLandscape)
            else None
        ),
    )
    limit = f", cost <= {budget_label(cfg.budget)} {space.cost.metric}"
    log.info(
        "searching %d of %d layers of %s with %s; budget %d evaluations%s",
        len(space.searchable),
        len(setup.inventory),
        cfg.model.name,
        agent.name,
        recorder.budget,
        "" if space.budget is None else limit,
    )
    with monitor:
        run_search(agent, ctx, float(cfg.search.uniform_start))
    _finish(cfg, out, scorer, agent, recorder, reference_cost)


def _finish(
    cfg: DictConfig,
    out: Path,
    scorer: Scorer,
    agent: Any,
    recorder: SearchRecorder,
    reference_cost: float,
) -> None:
    """After the agent: warnings, the uniform references, the feasibility check, results."""
    space, evaluator, float_accuracy = recorder.space, scorer.evaluator, scorer.float_accuracy
    note = _learning_warnings(agent, recorder)
    _check_best(recorder, budget_label(cfg.budget), reference_cost, out)
    references = {
        f"W{bits}": recorder.evaluate(space.uniform(bits), reference=True)
        for bits in cfg.search.reference_bits
        if bits in space.w_choices
    }
    # random search's proposals are projected by design; a learning agent's should fit
    projection_note = (
        None if agent.name == "random" else space.projection.note(agent.name, space.tensors)
    )
    if projection_note:
        log.warning(projection_note)
    extras: dict[str, Any] = {
        "agent_warning": note,
        "projection": space.projection.summary(space.tensors) | {"warning": projection_note},
    }
    extras["model_proposals"] = _model_proposals(recorder)
    if isinstance(evaluator, SyntheticLandscape):
        extras["synthetic"] = _synthetic_summary(evaluator, recorder)
    outcome = SearchOutcome(
        space, recorder, references, float_accuracy, reference_cost, scorer.float_meta, extras
    )
    _write_results(cfg, out, outcome)


@dataclass
class Scorer:
    """What turns a policy into an accuracy, and the float model's numbers it starts from."""

    evaluator: PolicyEvaluator | SyntheticLandscape | SupernetEvaluator
    data: DataSplits | None
    float_meta: dict[str, Any]
    float_accuracy: float


def _build_scorer(cfg: DictConfig, space: SearchSpace, setup: Setup) -> Scorer:
    """``evaluator=synthetic``: the landscape (no data, no training); otherwise the float
    model (trained first when not cached) and its short-retraining evaluator, or with
    ``evaluator=supernet`` the cached supernet."""
    if cfg.evaluator.name == "synthetic":
        landscape = SyntheticLandscape(space, SyntheticConfig.from_config(cfg.evaluator))
        landscape.optimum()  # a UserError without a budget, before any work
        return Scorer(landscape, None, {"test_acc": None}, landscape.float_accuracy)
    supernet = locate_supernet(setup, space) if cfg.evaluator.name == "supernet" else None
    float_checkpoint = load_trained_float(setup)
    if supernet is not None:
        evaluator: PolicyEvaluator | SupernetEvaluator = supernet_evaluator(setup, supernet)
    else:
        evaluator = retrain_evaluator(setup)
    return Scorer(evaluator, setup.data, float_checkpoint.meta, evaluator.float_accuracy())


def _learning_warnings(agent: Any, recorder: SearchRecorder) -> str | None:
    """Log why a search ended early and whether an RL agent had the episodes to learn;
    return the latter (for summary.json)."""
    stopped_at = recorder.agent_stopped_at
    if stopped_at is not None:
        log.warning(
            "%s stopped after %d episodes with %d of %d evaluations spent: it had no new "
            "policy to propose (the uniform agent has one per bit choice; an agent that "
            "only revisits evaluated policies stops after search.patience such episodes in "
            "a row (the last %d here), or at search.max_episodes)%s",
            agent.name,
            recorder.episode,
            stopped_at,
            recorder.budget,
            recorder.stale_when_stopped,
            f"; the accuracy model (search.model_every) proposed {rest} more"
            if (rest := recorder.used - stopped_at)
            else "",
        )
    learning_note = getattr(agent, "learning_note", None)  # RL agents: did it learn?
    note = learning_note(recorder.episode, recorder.used) if learning_note else None
    if note:
        log.warning(note)
    return note


def _model_proposals(recorder: SearchRecorder) -> dict[str, Any]:
    """How many evaluations the accuracy model proposed (``search.model_every``), and
    whether the best policy is one of them (logged when there were any)."""
    count = sum(e.by_model for e in recorder.searched())
    best = recorder.best is not None and recorder.best.by_model
    if count and recorder.best is not None:
        w, a = recorder.space.searched_bits(recorder.policy_of(recorder.best))
        uniform = len(set(w)) == len(set(a)) == 1
        log.info(
            "%d of %d evaluations were the accuracy model's proposals (search.model_every); "
            "the best policy %s",
            count,
            recorder.used,
            "is one of them"
            if best
            else f"is uniform W{w[0]}A{a[0]}"
            if uniform
            else f"came from {recorder.agent}",
        )
    stopped_at = recorder.agent_stopped_at
    after_agent = 0 if stopped_at is None else recorder.used - stopped_at
    return {"evaluations": count, "found_best": best, "after_agent_stopped": after_agent}


def _check_best(recorder: SearchRecorder, budget: str, reference_cost: float, out: Path) -> None:
    """A search returns a feasible policy or fails in one line (no policy.yaml)."""
    best = recorder.best
    if best is None:
        raise UserError("the search evaluated no policy (budget.evaluations too small?)")
    if recorder.diverged == recorder.used:
        raise UserError(
            f"the retraining of all {recorder.used} evaluated policies diverged (evaluator.lr "
            f"is the likely cause): no policy.yaml written; see {out / 'evaluations.csv'}"
        )
    if not best.feasible:
        raise UserError(
            f"no evaluated policy meets the cost budget ({recorder.used} evaluated, the "
            f"cheapest at {min(e.cost for e in recorder.searched()) / reference_cost:.3f} "
            f"of 8-bit, budget {budget}): no policy.yaml written; see "
            f"{out / 'evaluations.csv'}"
        )


@dataclass
class SearchOutcome:
    """A finished search and the numbers its results are written against."""

    space: SearchSpace
    recorder: SearchRecorder
    references: dict[str, Evaluation]
    float_accuracy: float
    reference_cost: float
    float_meta: dict[str, Any]
    extras: dict[str, Any]


def _synthetic_summary(landscape: SyntheticLandscape, recorder: SearchRecorder) -> dict[str, Any]:
    """The known optimum of a synthetic landscape and how far the found policy is from it
    (also printed)."""
    found = recorder.best_policy()
    assert found is not None
    optimum, optimum_policy = landscape.optimum()
    w_bits, a_bits = landscape.space.searched_bits(optimum_policy)
    summary = {
        "optimum": optimum,
        "found_true": landscape.true_accuracy(found),
        "regret": landscape.regret(found),
        "optimum_policy": {"w_bits": w_bits, "a_bits": a_bits},
        "noise_std": landscape.config.noise_std,
    }
    console.print(
        f"synthetic landscape: optimum {summary['optimum']:.3f} %, found "
        f"{summary['found_true']:.3f} % (true), regret {summary['regret']:.3f} points"
    )
    return summary


def _write_results(cfg: DictConfig, out: Path, outcome: SearchOutcome) -> None:
    """policy.yaml, summary.json (``extras`` merged in), the figures and the console table."""
    policy = _save_policy(cfg, out, outcome)
    space, recorder, references = outcome.space, outcome.recorder, outcome.references
    best, reference_cost = recorder.best, outcome.reference_cost
    assert best is not None
    dominating = dominating_references(best, references)
    write_json(out / "summary.json", _summary(outcome, dominating))
    title = f"{cfg.model.name} on {cfg.dataset.name}: {recorder.agent}"
    pareto_figure(
        out / "pareto.png",
        recorder.searched(),
        references,
        best,
        reference_cost,
        space.cost.metric,
        space.budget,
        outcome.float_accuracy,
        title,
    )
    params = [layer.weight_params for layer in space.inventory]
    bits_figure(out / "bits.png", policy, params, f"{title} (chosen policy)")
    console.print(
        _summary_table(best, references, reference_cost, outcome.float_accuracy, space.cost.metric)
    )
    console.print(f"policy: {out / 'policy.yaml'}  (next: qsearch finetune policy={out})")
    _suggest_uniform(out, outcome, dominating)


def _save_policy(cfg: DictConfig, out: Path, outcome: SearchOutcome) -> Policy:
    """Write the found policy, with what it was found under, to ``out/policy.yaml``."""
    space, recorder = outcome.space, outcome.recorder
    best, policy = recorder.best, recorder.best_policy()
    assert best is not None and policy is not None
    metric = space.cost.metric
    policy.metadata.update(
        {
            "val_accuracy": best.accuracy,
            "float_val_accuracy": outcome.float_accuracy,
            "cost": {
                metric: best.cost,
                f"{metric}_vs_8bit": best.cost / outcome.reference_cost,
                **best.metrics,
            },
            "feasible": best.feasible,
            "agent": recorder.agent,
            "seed": int(cfg.seed),
            "evaluations": recorder.used,
            "episodes": recorder.episode,
            "budget": {
                "evaluations": recorder.budget,
                "cost_fraction": cfg.budget.cost_fraction,
                "uniform": cfg.budget.get("uniform"),
                "cost": space.budget,
            },
            "hardware": str(cfg.hardware.name),
            "quantizer": str(cfg.quantizer.name),
            "average_bits": policy.average_bits(space.inventory),
        }
    )
    policy.save(
        out / "policy.yaml",
        comment=f"found by `qsearch search agent={recorder.agent}`; fine-tune with "
        f"`qsearch finetune policy={out}`",
    )
    return policy


def _summary(outcome: SearchOutcome, dominating: list[str]) -> dict[str, Any]:
    """The content of summary.json."""
    recorder, reference_cost = outcome.recorder, outcome.reference_cost
    assert recorder.best is not None
    summary = {
        "best": _row(recorder.best, reference_cost),
        "float_val_accuracy": outcome.float_accuracy,
        "float_test_accuracy": outcome.float_meta["test_acc"],
        "references": {k: _row(v, reference_cost) for k, v in outcome.references.items()},
        "evaluations": recorder.used,
        "diverged": recorder.diverged,
        "episodes": recorder.episode,
        "stopped_by": "budget" if recorder.agent_stopped_at is None else "agent (no new policies)",
        "metric": outcome.space.cost.metric,
        "budget_cost": outcome.space.budget,
        "evaluator": {
            "computed": getattr(recorder.evaluator, "misses", None),  # not from the cache
            "cache_hits": getattr(recorder.evaluator, "hits", None),
            "seconds": getattr(recorder.evaluator, "seconds", None),
        },
        "dominated_by": dominating,
    }
    return summary | outcome.extras


def _suggest_uniform(out: Path, outcome: SearchOutcome, dominating: list[str]) -> None:
    """Save each uniform reference that dominates the found policy and say so."""
    space = outcome.space
    for label in dominating:
        reference = outcome.references[label]
        path = Policy.from_bits(
            space.model, space.dataset, space.names, reference.w_bits, reference.a_bits
        ).save(
            out / f"policy_uniform_{label}.yaml",
            comment=f"uniform {label} reference of `qsearch search` in {out}",
        )
        console.print(
            f"[yellow]note:[/] uniform {label} ({reference.accuracy:.2f} %, "
            f"{reference.cost / outcome.reference_cost:.3f} of 8-bit) is at least as accurate "
            f"and as cheap as the found policy: `qsearch finetune policy={path}` may serve "
            "you better (or give the search more evaluations)."
        )


def dominating_references(best: Evaluation, references: dict[str, Evaluation]) -> list[str]:
    """Labels of the uniform references that Pareto-dominate the found policy.

    A reference dominates when it meets the budget (if the found one does), is at least as
    accurate and at most as costly, and strictly better on one of the two. The agent's
    result stays the agent's (references are not charged to its budget, and the agent
    comparison must not be flattered by them); the user is told instead.
    """
    return [
        label
        for label, reference in references.items()
        if (reference.feasible or not best.feasible)
        and reference.accuracy >= best.accuracy
        and reference.cost <= best.cost
        and (reference.accuracy > best.accuracy or reference.cost < best.cost)
    ]


def _row(evaluation: Evaluation, reference_cost: float) -> dict[str, Any]:
    return {
        "val_accuracy": evaluation.accuracy,
        "cost": evaluation.cost,
        "cost_vs_8bit": evaluation.cost / reference_cost,
        "feasible": evaluation.feasible,
        "w_bits": evaluation.w_bits,
        "a_bits": evaluation.a_bits,
    }


def _summary_table(
    best: Evaluation,
    references: dict[str, Evaluation],
    reference_cost: float,
    float_accuracy: float,
    metric: str,
) -> Table:
    table = Table(title=f"search result (float val accuracy {float_accuracy:.2f} %)")
    for column in ("policy", "val acc %", f"{metric} vs 8-bit", "weight bits", "activation bits"):
        table.add_column(column)
    table.add_row(
        "[bold]found",
        f"{best.accuracy:.2f}",
        f"{best.cost / reference_cost:.3f}",
        bits_text(best.w_bits),
        bits_text(best.a_bits),
    )
    for label, evaluation in references.items():
        table.add_row(
            f"uniform {label}",
            f"{evaluation.accuracy:.2f}",
            f"{evaluation.cost / reference_cost:.3f}",
            bits_text(evaluation.w_bits),
            bits_text(evaluation.a_bits),
        )
    return table

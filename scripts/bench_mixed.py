"""Mixed vs uniform at low bits: does a searched per-layer policy beat the best uniform one
of at most the same cost, after the same fine-tune?

    python scripts/bench_mixed.py --pairs lenet5-mnist --plan cpu          # ~1 h on 2 cores
    python scripts/bench_mixed.py --pairs resnet20-cifar10 --finetune-epochs 3 --plan cpu
    python scripts/bench_mixed.py                                          # everything (GPU)
    python scripts/bench_mixed.py --pairs resnet20-cifar10 --budgets W3A3 --finetune-epochs 3 \
        --uniform-only                                  # only the uniform yardstick (~1 h)

Per pair (``conf/experiment/mp_<pair>.yaml``: W and A searched in 2..8 bits, first and last
layer at 8) and budget (``budget.uniform``: the cost of uniform W3A3, of uniform W2A3, in the
experiment's metric): every agent of conf/agent/ searches (``qsearch search``, run dirs under
``outputs/bench_mixed/``, resumed when killed), and its policy is fine-tuned by ``qsearch
finetune``; so is every uniform WxA policy within the budget (the yardstick: "best uniform"
is the most accurate of them). ``--plan full`` fine-tunes every agent x seed; ``--plan cpu``
is the cheapest faithful version: every agent's seed 0, then the three seeds of the agent
whose seed 0 gained the most. Fine-tuned accuracies are cached in
benchmarks/mixed_finetunes.json (keyed by policy and fine-tune overrides): a re-run only does
what is missing.

Output: benchmarks/mixed_vs_uniform.json rows {pair, budget, metric, agent, seed,
searched_test, best_uniform_test, best_uniform_policy, delta, cost_vs_8bit, ...}, a table,
the accuracy-vs-cost figure and the per-layer bits of the best searched policies in
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _bench import (
    DOC,
    REPO,
    RESULTS_DIR,
    finetune_key,
    finetune_policy,
    markdown_table,
    qsearch_command,
    read_json_file,
    recipe_tag,
    update_doc_section,
    write_json_file,
)
from qsearch.config import group_options

PAIRS = {
    "lenet5-mnist": "mp_lenet5_mnist",
    "resnet20-cifar10": "mp_resnet20_cifar10",
    "mobilenet_v2-cifar10": "mp_mobilenet_v2_cifar10",
    "mobilenet_v2-cifar10-edge": "mp_mobilenet_v2_cifar10_edge",
}
BUDGETS = ("W3A3", "W2A3")
AGENTS = tuple(name for name in group_options("agent") if name != "uniform")
RESULTS = RESULTS_DIR / "mixed_vs_uniform.json"
FINETUNES = RESULTS_DIR / "mixed_finetunes.json"
UNIFORM = RESULTS_DIR / "mixed_uniform.json"  # the fine-tuned uniform yardstick per setting
PROXY_TRUTH = RESULTS_DIR / "proxy_ground_truth.json"  # scripts/bench_proxy.py's fine-tunes
WORK = REPO / "outputs" / "bench_mixed"
FIGURE = DOC.parent / "mixed_vs_uniform.png"


@dataclass(frozen=True)
class Setting:
    """One pair at one budget, with the benchmark's command-line choices."""

    pair: str
    budget: str
    evaluations: int
    max_episodes_factor: int
    finetune: tuple[str, ...]  # qsearch finetune overrides (the shortened schedule)
    search: tuple[str, ...]  # extra qsearch search overrides

    @property
    def overrides(self) -> list[str]:
        return [f"experiment={PAIRS[self.pair]}", f"budget.uniform={self.budget}"]

    @property
    def evaluator(self) -> str:
        """The searches' evaluator (``--search evaluator=...``; the experiment's default:
        retrain)."""
        chosen = [o.split("=", 1)[1] for o in self.search if o.startswith("evaluator=")]
        return chosen[-1] if chosen else "retrain"


def run_dir(pair: str, budget: str, agent: str, seed: int, evaluator: str) -> Path:
    """Where the search of one row runs (the default evaluator keeps the plain name)."""
    suffix = "" if evaluator == "retrain" else f"-{evaluator}"
    return WORK / pair / budget / f"{agent}-s{seed}{suffix}"


def space_of(setting: Setting) -> Any:
    """The composed search space (budget set) of ``setting``; no data is read."""
    from qsearch.commands.search import build_space
    from qsearch.config import job_config
    from qsearch.setup import Setup

    setup = Setup.from_config(job_config("search", [*setting.overrides, *setting.search]))
    return build_space(setup.cfg, setup.inventory)


def finetuned(policy: Any, setting: Setting, cache: dict[str, Any]) -> dict[str, float]:
    """``policy``'s accuracies after ``qsearch finetune`` (cached in FINETUNES; the same
    fine-tune done by scripts/bench_proxy.py for its ground truth is reused)."""
    pair = f"{policy.model}-{policy.dataset}"
    key = f"{pair}|{policy.key()}|{' '.join(setting.finetune)}{recipe_tag(pair)}"
    if key not in cache:
        epochs = [o.split("=", 1)[1] for o in setting.finetune if o.startswith("finetune.epochs=")]
        known = None
        if len(epochs) == len(setting.finetune):  # nothing but the epochs: bench_proxy's kind
            proxy_key = finetune_key(pair, policy.key(), epochs[0] if epochs else None)
            known = read_json_file(PROXY_TRUTH, {}).get(proxy_key)
        result = known or finetune_policy(policy, list(setting.finetune))
        cache.update(read_json_file(FINETUNES, {}))  # another bench_mixed may have added some
        cache[key] = result
        write_json_file(FINETUNES, cache)
    return cache[key]


def uniform_yardstick(setting: Setting, cache: dict[str, Any]) -> list[dict[str, Any]]:
    """Every uniform WxA policy within the budget, fine-tuned: ``{policy, test, cost}``."""
    space = space_of(setting)
    reference = space.cost.total(space.uniform_pair(8, 8))
    rows = []
    for w, a in space.uniform_within_budget():
        policy = space.uniform_pair(w, a)
        result = finetuned(policy, setting, cache)
        cost = space.cost.total(policy) / reference
        rows.append({"policy": f"W{w}A{a}", "test": result["test"], "cost_vs_8bit": cost})
        print(f"{setting.pair} {setting.budget} uniform W{w}A{a}: {result}", flush=True)
    return rows


def search(setting: Setting, agent: str, seed: int) -> Path | None:
    """Run (or resume, or reuse) ``qsearch search`` for ``agent`` and ``seed``; its run dir,
    or None when the search failed (its log in the run dir says why)."""
    run = run_dir(setting.pair, setting.budget, agent, seed, setting.evaluator)
    if (run / "policy.yaml").is_file():
        return run
    args = [
        *setting.overrides,
        f"agent={agent}",
        f"seed={seed}",
        f"budget.evaluations={setting.evaluations}",
        # an RL agent that has converged re-proposes evaluated policies (free): stop it
        f"search.max_episodes={setting.max_episodes_factor * setting.evaluations}",
        *setting.search,
        f"hydra.run.dir={run}",
    ]
    if (run / ".hydra" / "overrides.yaml").is_file():  # killed: continue with its settings
        args = [f"resume={run}"]
    # the search's own output (tables, progress) goes to its log in the run dir
    done = subprocess.run(qsearch_command("search", *args), cwd=REPO, stdout=subprocess.DEVNULL)
    if done.returncode != 0:
        print(f"{setting.pair} {setting.budget} {agent} seed {seed}: search failed ({run})")
        return None
    return run


def searched_row(
    setting: Setting, agent: str, seed: int, best: dict[str, Any], cache: dict[str, Any]
) -> dict[str, Any] | None:
    """Search, fine-tune the found policy, and compare it with the best uniform one (None
    when the search failed)."""
    from qsearch.quant.policy import Policy

    run = search(setting, agent, seed)
    if run is None:
        return None
    policy = Policy.load(run / "policy.yaml")
    result = finetuned(policy, setting, cache)
    cost = policy.metadata["cost"]
    metric = next(key for key in cost if key.endswith("_vs_8bit"))
    row = {
        "pair": setting.pair,
        "budget": setting.budget,
        "metric": metric.removesuffix("_vs_8bit"),
        "agent": agent,
        "evaluator": setting.evaluator,
        "seed": seed,
        "searched_test": result["test"],
        "searched_val_proxy": policy.metadata["val_accuracy"],
        "best_uniform_test": best["test"],
        "best_uniform_policy": best["policy"],
        "delta": round(result["test"] - best["test"], 4),
        "cost_vs_8bit": cost[metric],
        "best_uniform_cost_vs_8bit": best["cost_vs_8bit"],
        "evaluations": policy.metadata["evaluations"],
        "finetune": " ".join(setting.finetune) or "default",
        "w_bits": policy.w_bits,
        "a_bits": policy.a_bits,
    }
    save_rows([row])  # after every search: a killed run keeps what finished
    print(
        f"{setting.pair} {setting.budget} {agent} ({setting.evaluator}) seed {seed}: "
        f"{result['test']:.2f} "
        f"(best uniform {best['policy']} {best['test']:.2f}, delta {row['delta']:+.2f})",
        flush=True,
    )
    return row


def run_setting(
    setting: Setting, agents: list[str], seeds: int, plan: str, first_seed: int = 0
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The yardstick and the searched rows of one setting, by ``plan``."""
    cache = read_json_file(FINETUNES, {})
    uniform = uniform_yardstick(setting, cache)
    if not uniform:
        raise SystemExit(f"no uniform policy fits {setting.budget} on {setting.pair}")
    save_uniform(setting, uniform)
    best = max(uniform, key=lambda row: row["test"])
    first_seeds = range(first_seed, seeds) if plan == "full" else range(1)
    found = [searched_row(setting, a, s, best, cache) for a in agents for s in first_seeds]
    rows = [row for row in found if row is not None]
    if plan == "cpu" and seeds > 1 and rows:
        leader = max(rows, key=lambda row: row["delta"])["agent"]
        more = [searched_row(setting, leader, s, best, cache) for s in range(1, seeds)]
        rows += [row for row in more if row is not None]
    return uniform, rows


def load_uniform() -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Every setting's fine-tuned uniform yardstick, keyed by (pair, budget)."""
    saved = read_json_file(UNIFORM, {})
    return {tuple(key.split("|")): rows for key, rows in saved.items()}  # type: ignore[misc]


def save_uniform(setting: Setting, rows: list[dict[str, Any]]) -> None:
    saved = read_json_file(UNIFORM, {})
    saved[f"{setting.pair}|{setting.budget}"] = rows
    write_json_file(UNIFORM, saved)


def save_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merge ``rows`` into RESULTS (same pair, budget, agent, evaluator, seed: replaced)."""

    def key(row: dict[str, Any]) -> tuple[Any, ...]:
        return row["pair"], row["budget"], row["agent"], evaluator_of(row), row["seed"]

    merged = {key(row): row for row in read_json_file(RESULTS, [])}
    merged.update({key(row): row for row in rows})
    ordered = sorted(merged.values(), key=key)
    write_json_file(RESULTS, ordered)
    return ordered


def evaluator_of(row: dict[str, Any]) -> str:
    return row.get("evaluator", "retrain")  # rows before 2026-11-29 (7) were all retrain


def summarise(rows: list[dict[str, Any]], uniforms: dict[tuple[str, str], Any]) -> str:
    """The docs/benchmarks.md section: one table per pair and budget."""
    parts = [
        "`python scripts/bench_mixed.py` (conf/experiment/mp_*.yaml): W and A searched in "
        "2..8 bits, first/last layer at 8, budget = the cost of uniform W3A3 or W2A3 in the "
        "experiment's metric. Every policy (searched, and every uniform WxA within the "
        "budget) is fine-tuned by the same `qsearch finetune`; delta = searched test accuracy "
        "minus the best uniform one's, in points. The lenet5-mnist rows predate LSQ's "
        "least-MSE initial activation step (2026-11-29); the resnet20-cifar10 ones use it."
    ]
    for pair, budget in sorted({(r["pair"], r["budget"]) for r in rows}):
        subset = [r for r in rows if r["pair"] == pair and r["budget"] == budget]
        first = subset[0]
        uniform = uniforms.get((pair, budget), [])
        line = ", ".join(f"{u['policy']} {u['test']:.2f}" for u in uniform)
        parts.append(
            f"**{pair}, budget uniform {budget}'s {first['metric']}** (fine-tune: "
            f"{first['finetune']}; {first['evaluations']} evaluations per search). Uniform "
            f"within the budget: {line or 'see benchmarks/mixed_finetunes.json'}; best "
            f"uniform {first['best_uniform_policy']} {first['best_uniform_test']:.2f} %."
        )
        table = []
        for agent, evaluator in sorted({(r["agent"], evaluator_of(r)) for r in subset}):
            mine = sorted(
                (r for r in subset if (r["agent"], evaluator_of(r)) == (agent, evaluator)),
                key=lambda r: r["seed"],
            )
            deltas = [r["delta"] for r in mine]
            table.append(
                [
                    agent,
                    evaluator,
                    ", ".join(str(r["seed"]) for r in mine),
                    ", ".join(f"{r['searched_test']:.2f}" for r in mine),
                    ", ".join(f"{r['cost_vs_8bit']:.3f}" for r in mine),
                    f"{statistics.median(deltas):+.2f}",
                ]
            )
        headers = [
            "agent",
            "evaluator",
            "seeds",
            "searched test %",
            "cost vs 8-bit",
            "median delta",
        ]
        parts.append(markdown_table(headers, table))
    searched = {(r["pair"], r["budget"]) for r in rows}
    for (pair, budget), uniform in sorted(uniforms.items()):
        if (pair, budget) in searched or not uniform:
            continue
        best = max(uniform, key=lambda u: u["test"])
        line = ", ".join(f"{u['policy']} {u['test']:.2f}" for u in uniform)
        parts.append(
            f"**{pair}, budget uniform {budget}** (no search fine-tuned yet). Uniform within "
            f"the budget, fine-tuned (test %): {line}; best uniform {best['policy']} "
            f"{best['test']:.2f} %."
        )
    parts.append(f"![accuracy vs cost]({FIGURE.name})")
    return "\n\n".join(parts)


def figure(rows: list[dict[str, Any]], uniforms: dict[tuple[str, str], Any]) -> None:
    """Test accuracy vs cost per pair and budget: the uniform yardstick and the searched
    policies; and the per-layer bits of each setting's best searched policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from qsearch.quant.policy import Policy
    from qsearch.report.figures import bits_figure, save_figure

    settings = sorted({(r["pair"], r["budget"]) for r in rows})
    fig, axes = plt.subplots(1, len(settings), figsize=(5 * len(settings), 4), squeeze=False)
    for ax, (pair, budget) in zip(axes[0], settings, strict=True):
        subset = [r for r in rows if r["pair"] == pair and r["budget"] == budget]
        uniform = uniforms.get((pair, budget), [])
        for u in uniform:
            ax.annotate(u["policy"], (u["cost_vs_8bit"], u["test"]), fontsize=7)
        ax.scatter(
            [u["cost_vs_8bit"] for u in uniform],
            [u["test"] for u in uniform],
            color="tab:gray",
            marker="s",
            label="uniform WxA",
        )
        limit = [u["cost_vs_8bit"] for u in uniform if u["policy"] == budget]
        if limit:
            ax.axvline(limit[0], color="tab:red", ls=":", lw=1, label="budget")
        for agent, evaluator in sorted({(r["agent"], evaluator_of(r)) for r in subset}):
            mine = [r for r in subset if (r["agent"], evaluator_of(r)) == (agent, evaluator)]
            xs, ys = [r["cost_vs_8bit"] for r in mine], [r["searched_test"] for r in mine]
            ax.scatter(xs, ys, label=f"{agent} ({evaluator})")
        ax.axhline(subset[0]["best_uniform_test"], color="tab:gray", ls="--", lw=1)
        ax.set(title=f"{pair}, budget {budget}", xlabel="cost vs uniform 8-bit")
        ax.set_ylabel("test accuracy after fine-tune (%)")
        ax.legend(fontsize=7)
        best = max(subset, key=lambda r: r["searched_test"])
        where = run_dir(pair, budget, best["agent"], best["seed"], evaluator_of(best))
        policy = Policy.load(where / "policy.yaml")
        inventory = space_of(Setting(pair, budget, 0, 0, (), ())).inventory
        bits_figure(
            DOC.parent / f"mixed_bits_{pair}_{budget}.png",
            policy,
            [layer.weight_params for layer in inventory],
            f"{pair}, budget {budget}: {best['agent']} seed {best['seed']} "
            f"({best['delta']:+.2f} vs best uniform)",
        )
    fig.tight_layout()
    save_figure(fig, FIGURE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=PAIRS)
    parser.add_argument("--budgets", nargs="+", default=list(BUDGETS))
    parser.add_argument("--agents", nargs="+", default=list(AGENTS), choices=AGENTS)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--first-seed", type=int, default=0, help="with --plan full: seeds first-seed..seeds-1"
    )
    parser.add_argument("--evaluations", type=int, default=200)
    parser.add_argument("--plan", choices=("cpu", "full"), default="cpu")
    parser.add_argument(
        "--max-episodes-factor", type=int, default=10, help="episodes per search, x evaluations"
    )
    parser.add_argument("--finetune-epochs", type=int, help="shortened fine-tune schedule")
    parser.add_argument(
        "--search", nargs="*", default=[], help="extra qsearch search overrides for every run"
    )
    parser.add_argument(
        "--uniform-only", action="store_true", help="only the fine-tuned uniform yardstick"
    )
    args = parser.parse_args()
    finetune = (f"finetune.epochs={args.finetune_epochs}",) if args.finetune_epochs else ()
    for pair in args.pairs:
        for budget in args.budgets:
            setting = Setting(
                pair,
                budget,
                args.evaluations,
                args.max_episodes_factor,
                finetune,
                tuple(args.search),
            )
            agents = [] if args.uniform_only else list(args.agents)
            run_setting(setting, agents, args.seeds, args.plan, args.first_seed)
    all_rows, uniforms = read_json_file(RESULTS, []), load_uniform()
    figure(all_rows, uniforms)
    update_doc_section("mixed", summarise(all_rows, uniforms))
    print(f"wrote {RESULTS}, {FIGURE} and the mixed section of {DOC}")


if __name__ == "__main__":
    main()

"""Search benchmark: ReLeQ on LeNet-5/MNIST, and all agents at an equal budget.

    python scripts/bench_search.py releq                       # ReLeQ + fine-tune vs uniform
    python scripts/bench_search.py compare                     # agents x pairs x seeds
    python scripts/bench_search.py compare --pairs lenet5-mnist --seeds 0

Every search runs as `qsearch search ...` in its own directory under outputs/bench/search/
(a finished one, with summary.json, is reused and an interrupted one resumed: the
benchmark can be stopped and re-run), and every fine-tune as `qsearch finetune ...` under
outputs/bench/finetune/.

releq: ReLeQ's setting (weights searched in {2,3,4,5,8} for every layer, first and last
included; activations at 8 bits), then `qsearch finetune`, against uniform policies
fine-tuned the same way, among them the best one of at most the same weight size (the
honest yardstick).

compare: the same search space for every agent (weight bits {2,3,4,5,8} for the inner
layers, first/last at 8, activations at 8), a BitOPs budget of `--budget` x uniform 8-bit,
the same number of evaluations (the pair's: 40 on LeNet-5/MNIST, a short 20 on
ResNet-20/CIFAR-10, or --evaluations); best validation accuracy at budget (mean and std over
seeds), seconds per retraining and cache hits. The first seed's policy of every agent, and
the best uniform policy under the budget, are fine-tuned and their test accuracy reported.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _bench import REPO, markdown_table, save_json, update_doc_section
from qsearch.config import group_options
from qsearch.quant.policy import Policy

OUT = REPO / "outputs" / "bench"
AGENTS = tuple(group_options("agent"))  # every agent of conf/agent/
CHOICES = [2, 3, 4, 5, 8]
# compare counts evaluations of whole policies: ReLeQ's per-step retraining (the default)
# would spend an 18-layer network's whole budget on the partial policies of one episode
AGENT_OVERRIDES = {"releq": ("reward.every=episode",)}


@dataclass(frozen=True)
class Pair:
    """A model/dataset pair of the benchmark and how to search and fine-tune it here."""

    model: str
    dataset: str
    experiment: str  # the experiment= config of `compare` (space, cost model, evaluator)
    search: tuple[str, ...]  # further overrides of `qsearch search` (a shorter evaluator)
    finetune: tuple[str, ...]  # overrides of `qsearch finetune`
    evaluations: int  # compare: evaluations per search unless --evaluations says otherwise


PAIRS: dict[str, Pair] = {
    "lenet5-mnist": Pair("lenet5", "mnist", "compare_lenet_mnist", (), (), 40),
    # short budget: a ResNet-20 LSQ step takes ~0.3 s on 2 cores, so 20 retraining steps
    # and 1000 validation images per evaluation, 20 evaluations, 1 fine-tune epoch
    "resnet20-cifar10": Pair(
        "resnet20",
        "cifar10",
        "compare_resnet20_cifar10",  # float_seed=0: one float model for every seed
        ("evaluator.steps=20",),
        ("finetune.epochs=1", "runtime.compile=true"),
        20,
    ),
}


def qsearch(command: str, run_dir: Path, overrides: list[str]) -> Path:
    """Run a qsearch command into ``run_dir`` unless it already finished there."""
    if (run_dir / ("summary.json" if command == "search" else "metrics.json")).is_file():
        return run_dir
    if (run_dir / ".hydra" / "overrides.yaml").is_file():
        args = [command, f"resume={run_dir}"]
    else:
        args = [command, *overrides, f"hydra.run.dir={run_dir}"]
    print("+ qsearch", " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "qsearch.cli", *args], cwd=REPO, check=True)
    return run_dir


def finetune(policy: Path, pair: str, name: str, seed: int = 0) -> dict[str, Any]:
    p = PAIRS[pair]
    run = qsearch(
        "finetune",
        OUT / "finetune" / name,
        [
            f"policy={policy}",
            f"model={p.model}",
            f"dataset={p.dataset}",
            f"seed={seed}",
            *p.finetune,
        ],
    )
    return json.loads((run / "metrics.json").read_text())


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _wall_seconds(run: Path) -> float:
    rows = _csv(run / "episodes.csv")
    return float(rows[-1]["wall_seconds"]) if rows else 0.0


def _bits(text: str) -> list[int]:
    return [int(b) for b in text.split()]


def releq_benchmark(evaluations: int) -> dict[str, Any]:
    pair = PAIRS["lenet5-mnist"]
    model, dataset = pair.model, pair.dataset
    run = qsearch(
        "search",
        OUT / "search" / "releq-lenet5-mnist",
        ["experiment=releq_lenet_mnist", f"budget.evaluations={evaluations}"],
    )
    summary = json.loads((run / "summary.json").read_text())
    policy = Policy.load(run)
    found = finetune(run, "lenet5-mnist", "releq-lenet5-mnist")["accuracy"]
    per_param = policy.metadata["average_bits"]["w_per_param"]
    uniform_rows = []
    for bits in CHOICES:
        path = OUT / "policies" / f"uniform-w{bits}a8-lenet5-mnist.yaml"
        n = len(policy.layers)
        Policy.from_bits(model, dataset, list(policy.layers), [bits] * n, [8] * n).save(path)
        metrics = finetune(path, "lenet5-mnist", f"uniform-w{bits}a8-lenet5-mnist")
        uniform_rows.append(
            {"bits": bits, "test": metrics["accuracy"]["after_test"], "fits": bits <= per_param}
        )
    fitting = [row for row in uniform_rows if row["fits"]]
    return {
        "w_bits": policy.w_bits,
        "average_bits": sum(policy.w_bits) / len(policy.w_bits),
        "w_bits_per_param": per_param,
        "float_test": found["float_test"],
        "after_test": found["after_test"],
        "loss": found["float_test"] - found["after_test"],
        "episodes": summary["episodes"],
        "evaluations": summary["evaluations"],
        "budget_evaluations": evaluations,
        "search_seconds": _wall_seconds(run),
        "uniform": uniform_rows,
        "best_uniform_at_size": max(fitting, key=lambda row: row["test"]) if fitting else None,
    }


def compare_benchmark(
    pair_name: str, seeds: list[int], evaluations: int, budget: float
) -> dict[str, Any]:
    """Every agent on one pair at the same budget, over ``seeds``."""
    pair = PAIRS[pair_name]
    rows = []
    for agent in AGENTS:
        runs = [
            qsearch(
                "search",
                OUT / "search" / f"{agent}-{pair_name}-s{seed}",
                [
                    f"experiment={pair.experiment}",
                    f"agent={agent}",
                    *AGENT_OVERRIDES.get(agent, ()),
                    f"seed={seed}",
                    f"budget.evaluations={evaluations}",
                    f"budget.cost_fraction={budget}",
                    *pair.search,
                ],
            )
            for seed in seeds
        ]
        summaries = [json.loads((r / "summary.json").read_text()) for r in runs]
        accuracy = [
            s["best"]["val_accuracy"] if s["best"]["feasible"] else float("nan") for s in summaries
        ]
        retrained = sum(s["evaluator"]["computed"] or 0 for s in summaries)
        hits = sum(s["evaluator"]["cache_hits"] or 0 for s in summaries)
        row = {
            "agent": agent,
            "val_mean": statistics.mean(accuracy),
            "val_std": statistics.stdev(accuracy) if len(accuracy) > 1 else 0.0,
            "val_per_seed": accuracy,
            "cost_vs_8bit": statistics.mean(s["best"]["cost_vs_8bit"] for s in summaries),
            "evaluations": statistics.mean(s["evaluations"] for s in summaries),
            "evals_per_minute": 60
            * sum(s["evaluations"] for s in summaries)
            / max(1e-9, sum(_wall_seconds(r) for r in runs)),
            "cache_hit_rate": hits / max(1, hits + retrained),
            "seconds_per_retraining": sum(s["evaluator"]["seconds"] or 0 for s in summaries)
            / retrained
            if retrained
            else None,  # every evaluation came from the shared cache
            "stopped_early": sum(s.get("stopped_by", "budget") != "budget" for s in summaries),
            "best_bits": summaries[0]["best"]["w_bits"],
            "test_after_finetune": finetune(runs[0], pair_name, f"{agent}-{pair_name}-s{seeds[0]}")[
                "accuracy"
            ]["after_test"],
        }
        rows.append(row)
        print(pair_name, row, flush=True)
    return {
        "seeds": seeds,
        "budget": budget,
        "evaluations": evaluations,
        "rows": rows,
        "best_uniform": _best_uniform_row(pair_name, seeds[0]),
    }


def _best_uniform_row(pair_name: str, seed: int) -> dict[str, Any]:
    """The uniform agent's best policy under the budget, fine-tuned like the others."""
    pair = PAIRS[pair_name]
    run = OUT / "search" / f"uniform-{pair_name}-s{seed}"
    feasible = [
        row
        for row in _csv(run / "evaluations.csv")
        if row["feasible"] == "True" and row["reference"] == "False"
    ]
    best = max(feasible, key=lambda row: float(row["accuracy"]))
    policy = Policy.from_bits(
        pair.model,
        pair.dataset,
        list(Policy.load(run).layers),
        _bits(best["w_bits"]),
        _bits(best["a_bits"]),
    )
    path = policy.save(OUT / "policies" / f"best-uniform-{pair_name}.yaml")
    metrics = finetune(path, pair_name, f"best-uniform-{pair_name}-s{seed}")
    return {
        "bits": best["w_bits"],
        "val": float(best["accuracy"]),
        "test_after_finetune": metrics["accuracy"]["after_test"],
    }


def _verdict(compare: dict[str, Any]) -> str:
    """The honest yardstick in words: which fine-tuned policies beat the best uniform one."""
    uniform = compare["best_uniform"]["test_after_finetune"]
    agents = [r for r in compare["rows"] if r["agent"] != "uniform"]
    above = [
        f"{r['agent']} {r['test_after_finetune']:.2f}"
        for r in agents
        if r["test_after_finetune"] > uniform
    ]
    rest = [
        f"{r['agent']} {r['test_after_finetune']:.2f}"
        for r in agents
        if r["test_after_finetune"] <= uniform
    ]
    top = max(r["val_mean"] for r in agents)
    best_val = [r["agent"] for r in agents if r["val_mean"] >= top - 1e-9]
    return (
        f"After the same fine-tune, the best uniform policy under the budget scores "
        f"{uniform:.2f} %; above it: {', '.join(above) or 'none'}; at or below it: "
        f"{', '.join(rest) or 'none'} (one seed each: differences of a few tenths are noise). "
        f"Best search by validation accuracy (mean over seeds): {', '.join(best_val)}."
    )


def _stop_note(releq: dict[str, Any]) -> str:
    budget = releq.get("budget_evaluations")
    if budget is None or releq["evaluations"] >= budget:
        return ""
    return (
        f" The search spent {releq['evaluations']} of its {budget} evaluations: it stopped at"
        f" the episode cap ({releq['episodes']} episodes; 100 x budget per process) because"
        " the converged LSTM policy kept proposing policies already evaluated."
    )


def report(results: dict[str, Any]) -> str:
    text = ["## Search (`python scripts/bench_search.py`)", ""]
    releq = results.get("releq")
    if releq:
        uniform = ", ".join(f"W{r['bits']}: {r['test']:.2f}" for r in releq["uniform"])
        best = releq["best_uniform_at_size"]
        text += [
            "### ReLeQ on LeNet-5 / MNIST, then LSQ fine-tuning",
            "",
            "Paper: weight bits {2,2,3,2} (avg 2.25) at 0.00 % loss. Target here: avg <= 2.5 "
            "bits at <= 0.3 % loss in <= 30 min on 2 cores. Weights searched for every layer "
            "in {2,3,4,5,8}; activations at 8 bits.",
            "",
            markdown_table(
                [
                    "weight bits",
                    "avg bits",
                    "per param",
                    "float test %",
                    "after fine-tune %",
                    "loss",
                    "evaluations",
                    "episodes",
                    "search time (last process)",
                ],
                [
                    [
                        " ".join(map(str, releq["w_bits"])),
                        f"{releq['average_bits']:.2f}",
                        f"{releq['w_bits_per_param']:.2f}",
                        f"{releq['float_test']:.2f}",
                        f"{releq['after_test']:.2f}",
                        f"{releq['loss']:+.2f}",
                        releq["evaluations"],
                        releq["episodes"],
                        f"{releq['search_seconds'] / 60:.1f} min",
                    ]
                ],
            ),
            "",
            f"Uniform W_k A8 policies, fine-tuned the same way (test %): {uniform}. Best "
            "uniform of at most the same weight bits per parameter: "
            + (f"W{best['bits']} at {best['test']:.2f} %." if best else "none fits.")
            + _stop_note(releq)
            + " A search that was interrupted and resumed reports the time of its last process"
            " only; evaluations take ~1.5 s each on an idle machine, far more when other torch"
            " jobs share the cores.",
            "",
        ]
    for pair_name, compare in results.get("compare", {}).items():
        rows = [
            [
                r["agent"],
                f"{r['val_mean']:.2f} ± {r['val_std']:.2f}",
                f"{r['cost_vs_8bit']:.3f}",
                f"{r['evaluations']:.0f}",
                "all cached"
                if r["seconds_per_retraining"] is None
                else f"{r['seconds_per_retraining']:.1f}",
                f"{100 * r['cache_hit_rate']:.0f} %",
                " ".join(map(str, r["best_bits"])),
                f"{r['test_after_finetune']:.2f}",
            ]
            for r in compare["rows"]
        ]
        uniform = compare["best_uniform"]
        rows.append(
            [
                "best uniform under budget",
                f"{uniform['val']:.2f} (seed {compare['seeds'][0]})",
                "",
                "",
                "",
                "",
                uniform["bits"],
                f"{uniform['test_after_finetune']:.2f}",
            ]
        )
        pair = PAIRS[pair_name]
        text += [
            f"### Equal budget on {pair.model} / {pair.dataset}: every agent, same space, "
            "same evaluations",
            "",
            f"Seeds {compare['seeds']}; weight bits {{{','.join(map(str, CHOICES))}}} for the "
            f"inner layers (first/last at 8, activations at 8); BitOPs budget "
            f"{compare['budget']} x uniform 8-bit; {compare['evaluations']} evaluations per "
            f"search (`experiment={pair.experiment}` {' '.join(pair.search)}). Validation "
            "accuracy of the best feasible "
            "policy (after the short retraining), mean ± std over seeds; test accuracy after "
            f"`qsearch finetune` ({', '.join(pair.finetune) or 'default epochs'}) of the first "
            "seed's policy. Evaluations below the budget: the agent had no new feasible "
            "policy to propose. The evaluation cache on disk is shared by every run (same "
            "float model, same retraining, so the same accuracy): agents run in the order "
            "listed and later ones find earlier ones' policies there, which is why "
            "throughput is given as seconds per retraining actually done.",
            "",
            markdown_table(
                [
                    "agent",
                    "val acc at budget",
                    "BitOPs vs 8-bit",
                    "evaluations",
                    "s / retraining",
                    "cache hits",
                    "bits (first seed)",
                    "test after fine-tune",
                ],
                rows,
            ),
            "",
            _verdict(compare),
            "",
        ]
    return "\n".join(text)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("part", choices=["releq", "compare"])
    parser.add_argument("--pairs", default=",".join(PAIRS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument(
        "--evaluations", type=int, default=None, help="per search (default: the pair's)"
    )
    parser.add_argument("--budget", type=float, default=0.5)
    args = parser.parse_args()
    path = REPO / "benchmarks" / "search.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    results.pop("machine", None)
    if args.part == "releq":
        results["releq"] = releq_benchmark(args.evaluations or 150)
        save(results)
    else:
        if not isinstance(results.get("compare"), dict):  # the old layout: a list of rows
            results = {k: v for k, v in results.items() if k not in ("compare", "budget")}
            results["compare"] = {}
        for pair in args.pairs.split(","):
            results["compare"][pair] = compare_benchmark(
                pair,
                [int(s) for s in args.seeds.split(",")],
                args.evaluations or PAIRS[pair].evaluations,
                args.budget,
            )
            save(results)  # each pair as soon as it is done
    return 0


def save(results: dict[str, Any]) -> None:
    save_json("search", results)
    update_doc_section("search", report(results))


if __name__ == "__main__":
    sys.exit(main())

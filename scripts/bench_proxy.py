"""Proxy fidelity: does a search's cheap evaluator rank policies as the final fine-tune does?

    python scripts/bench_proxy.py                          # every pair (hours on a CPU)
    python scripts/bench_proxy.py --pairs lenet5-mnist     # one pair
    python scripts/bench_proxy.py --pairs resnet20-cifar10 --finetune-epochs 3

Per pair, a fixed seeded set of mixed W+A policies (first/last layer at 8) with BitOPs
spread evenly from uniform W2A2's to W5A5's, plus every uniform WxA policy in that range,
saved in benchmarks/proxy_policies.json. Ground truth: each policy's test accuracy after
`qsearch finetune` (the product's command, seed 0), saved in
benchmarks/proxy_ground_truth.json keyed by pair, policy and epochs, and reused: a re-run
only fine-tunes what is missing, and a killed run keeps what finished. Proxies: the
search's evaluator (`evaluator=retrain`) at several step counts and validation subset
sizes, with no retraining but batch-norm statistics re-estimated (`evaluator.bn_batches`),
with distillation from the float model (`evaluator.distill_alpha`), and the weight-sharing
supernet (`evaluator=supernet`, trained once per pair by `qsearch supernet`, its training
time reported as setup_seconds); each scored on the validation split as in a search, timed
per evaluation. Output: benchmarks/proxy.json rows {pair, proxy, kendall_tau, spearman,
top5_recall, seconds_per_eval, setup_seconds, policies}, a table and scatter plots in
docs/benchmarks.md. Also how additive the fine-tuned accuracies are (benchmarks/
additivity.json; `--additivity-only` computes just that from the saved ground truth).
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from _bench import (
    REPO,
    RESULTS_DIR,
    finetune_key,
    finetune_policy,
    markdown_table,
    qsearch_command,
    update_doc_section,
)
from _bench import read_json_file as load_json
from _bench import write_json_file as save_json

PAIRS = {
    "lenet5-digits": ("lenet5", "digits"),  # embedded data, seconds: a smoke test of the script
    "lenet5-mnist": ("lenet5", "mnist"),
    "resnet20-cifar10": ("resnet20", "cifar10"),
    "mobilenet_v2-cifar10": ("mobilenet_v2", "cifar10"),
}
BITS = "[2,3,4,5,6,7,8]"
MIXED = 16  # random mixed policies per pair (--mixed)
# name: evaluator overrides (the search's evaluator=retrain)
PROXIES: dict[str, list[str]] = {
    "retrain-0": ["evaluator.steps=0"],
    "retrain-20-val1k": ["evaluator.steps=20", "evaluator.val_subset=1000"],
    "retrain-20": ["evaluator.steps=20"],
    "retrain-50": ["evaluator.steps=50"],
    "retrain-100": ["evaluator.steps=100"],
    "retrain-200": ["evaluator.steps=200"],
    "bn-only": ["evaluator.steps=0", "evaluator.bn_batches=8"],
    "retrain-20-bn": ["evaluator.steps=20", "evaluator.bn_batches=8"],
    "distill-20": ["evaluator.steps=20", "evaluator.distill_alpha=0.5"],
    "distill-50": ["evaluator.steps=50", "evaluator.distill_alpha=0.5"],
    # the weight-sharing supernet (`qsearch supernet`, trained once per pair; its default
    # recipe: the dataset's fine-tune epochs), scored after re-estimating BN statistics
    "supernet": ["evaluator=supernet"],
    "supernet-bn2": ["evaluator=supernet", "evaluator.bn_batches=2"],
}
FIGURE = REPO / "docs" / "proxy_scatter.png"


@dataclass(frozen=True)
class Files:
    """Where the benchmark keeps its policy sets, ground truth and results."""

    folder: Path

    @property
    def policies(self) -> Path:
        return self.folder / "proxy_policies.json"

    @property
    def ground_truth(self) -> Path:
        return self.folder / "proxy_ground_truth.json"

    @property
    def results(self) -> Path:
        return self.folder / "proxy.json"

    @property
    def additivity(self) -> Path:
        return self.folder / "additivity.json"


def _overrides(pair: str) -> list[str]:
    model, dataset = PAIRS[pair]
    return [
        f"model={model}",
        f"dataset={dataset}",
        "search.search_activations=true",
        f"search.w_bits={BITS}",
        f"search.a_bits={BITS}",
        "search.pin_first_last=8",
        "seed=0",
    ]


def _space(pair: str, extra: list[str] | None = None) -> tuple[Any, Any]:
    """The :class:`~qsearch.setup.Setup` of ``pair``'s search config and its (unbudgeted)
    space."""
    from qsearch.commands.search import build_space
    from qsearch.config import job_config
    from qsearch.setup import Setup

    setup = Setup.from_config(job_config("search", [*_overrides(pair), *(extra or [])]))
    return setup, build_space(setup.cfg, setup.inventory)


def policy_rows(pair: str, files: Files, mixed: int = MIXED) -> list[dict[str, Any]]:
    """The pair's saved policy set, drawn (seed 0) and saved on first use."""
    from qsearch.env.fidelity import policy_set

    saved = load_json(files.policies, {})
    if pair in saved:
        return saved[pair]
    _, space = _space(pair)

    def cost(w: int, a: int) -> float:
        return space.cost.total(space.uniform_pair(w, a))

    low, high = cost(2, 2), cost(5, 5)
    rows = [
        {"name": f"mixed{i:02d}", "w_bits": p.w_bits, "a_bits": p.a_bits}
        for i, p in enumerate(policy_set(space, mixed, low, high, seed=0))
    ]
    for w in space.w_choices:
        for a in space.a_choices:
            if low <= cost(w, a) <= high:
                policy = space.uniform_pair(w, a)
                rows.append({"name": f"W{w}A{a}", "w_bits": policy.w_bits, "a_bits": policy.a_bits})
    for row in rows:
        row["bitops"] = space.cost.total(space.policy(*_searched(space, row)))
    saved[pair] = rows
    save_json(files.policies, saved)
    return rows


def _searched(space: Any, row: dict[str, Any]) -> tuple[list[int], list[int]]:
    return (
        [row["w_bits"][i] for i in space.searchable],
        [row["a_bits"][i] for i in space.searchable],
    )


def _policy_key(row: dict[str, Any]) -> str:
    return " ".join(f"{w}/{a}" for w, a in zip(row["w_bits"], row["a_bits"], strict=True))


def _truth_key(pair: str, row: dict[str, Any], epochs: int | None) -> str:
    return finetune_key(pair, _policy_key(row), epochs)


def ground_truth(
    pair: str, rows: list[dict[str, Any]], epochs: int | None, files: Files
) -> list[float]:
    """Fine-tuned test accuracy of every policy, running `qsearch finetune` for the
    missing ones (saved after each)."""
    from qsearch.quant.policy import Policy

    _, space = _space(pair)
    model, dataset = PAIRS[pair]
    truth = load_json(files.ground_truth, {})
    # uniform policies first, cheapest first: they are also bench_mixed's yardstick
    order = sorted(rows, key=lambda row: (row["name"].startswith("mixed"), row["bitops"]))
    for i, row in enumerate(order):
        key = _truth_key(pair, row, epochs)
        if key not in truth:
            names = [layer.name for layer in space.inventory]
            policy = Policy.from_bits(model, dataset, names, row["w_bits"], row["a_bits"])
            overrides = [] if epochs is None else [f"finetune.epochs={epochs}"]
            truth[key] = finetune_policy(policy, overrides)
            save_json(files.ground_truth, truth)
            print(f"{pair} {row['name']} ({i + 1}/{len(rows)}): {truth[key]}", flush=True)
    return [float(truth[_truth_key(pair, row, epochs)]["test"]) for row in rows]


def proxy_scores(
    pair: str, rows: list[dict[str, Any]], proxy: str
) -> tuple[list[float], float, dict[str, Any] | None]:
    """Each policy's score under ``proxy`` (the search's evaluator, uncached), the mean
    seconds per evaluation, and the supernet's metrics.json (its training seconds and
    accuracy at each uniform bitwidth; None for the retraining proxies)."""
    from qsearch.commands.search import retrain_evaluator
    from qsearch.supernet.evaluator import locate_supernet, supernet_evaluator

    setup, space = _space(pair, PROXIES[proxy])
    setup.float_checkpoint()
    supernet = None
    if setup.cfg.evaluator.name == "supernet":
        train_supernet(pair, proxy)
        path = locate_supernet(setup, space)
        supernet = load_json(path.parent / "metrics.json", {})
        evaluator: Any = supernet_evaluator(setup, path)
    else:
        evaluator = retrain_evaluator(setup)
    evaluator.cache = None  # time every evaluation
    scores, start = [], time.perf_counter()
    for row in rows:
        scores.append(evaluator(space.policy(*_searched(space, row))).accuracy)
    return scores, (time.perf_counter() - start) / len(rows), supernet


def supernet_vs_finetuned(
    pair: str,
    rows: list[dict[str, Any]],
    supernet: dict[str, Any],
    epochs: int | None,
    files: Files,
) -> dict[str, dict[str, float]]:
    """The supernet's validation accuracy at each uniform WkAk of the policy set (no
    retraining) against a model fine-tuned separately at those bits (the ground truth)."""
    truth = load_json(files.ground_truth, {})
    by_name = {row["name"]: truth[_truth_key(pair, row, epochs)] for row in rows}
    return {
        bits: {
            "supernet_val": accuracy,
            "finetuned_val": by_name[f"W{bits}A{bits}"]["val"],
            "finetuned_test": by_name[f"W{bits}A{bits}"]["test"],
        }
        for bits, accuracy in supernet.get("uniform_val_acc", {}).items()
        if f"W{bits}A{bits}" in by_name
    }


def train_supernet(pair: str, proxy: str) -> None:
    """`qsearch supernet` with the pair's search overrides (a cached one returns at once)."""
    overrides = [o for o in PROXIES[proxy] if not o.startswith("evaluator=")]
    command = qsearch_command("supernet", *_overrides(pair))
    with tempfile.TemporaryDirectory() as tmp:
        command += [*overrides, f"hydra.run.dir={tmp}/run"]
        subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL)


def additivity(pair: str, files: Files) -> list[dict[str, Any]]:
    """How additive the pair's fine-tuned accuracies are: each ground-truth policy predicted
    by the additive noise model (qsearch.env.surrogate, the model behind
    ``search.model_every``) fitted on all the others (leave-one-out), per fine-tune recipe
    in the ground truth (the part of its key after the policy). Needs no run."""
    from qsearch.env.fidelity import fidelity
    from qsearch.env.surrogate import AdditiveSurrogate

    _, space = _space(pair)
    recipes: dict[str, dict[str, float]] = {}
    for key, value in load_json(files.ground_truth, {}).items():
        name, bits, recipe = key.split("|", 2)
        if name == pair:
            recipes.setdefault(recipe, {})[bits] = value["test"]
    rows = []
    for recipe, truth in sorted(recipes.items()):
        if len(truth) < 8:
            continue  # too few to fit and rank
        policies = []
        for bits in truth:
            pairs = [tuple(map(int, layer.split("/"))) for layer in bits.split()]
            row = {"w_bits": [w for w, _ in pairs], "a_bits": [a for _, a in pairs]}
            policies.append(space.policy(*_searched(space, row)))
        accuracy = list(truth.values())
        predicted = []
        for held_out in range(len(policies)):
            model = AdditiveSurrogate(space)
            for i, policy in enumerate(policies):
                if i != held_out:
                    model.add(policy, accuracy[i])
            model.fit()
            predicted.append(model.predict(policies[held_out]))
        score = fidelity(accuracy, predicted)
        error = np.array(predicted) - np.array(accuracy)
        rows.append(
            {
                "pair": pair,
                "recipe": recipe,
                "policies": len(policies),
                "kendall_tau": round(score.kendall_tau, 4),
                "spearman": round(score.spearman, 4),
                "rmse": round(float(np.sqrt(np.mean(error**2))), 3),
                "truth_std": round(float(np.std(accuracy)), 3),
            }
        )
    return rows


def summarise(results: list[dict[str, Any]], additive: list[dict[str, Any]] = ()) -> str:
    lines = [
        "`python scripts/bench_proxy.py`: rank agreement of each proxy (the search's "
        "evaluator) with the test accuracy after `qsearch finetune`, over a fixed set of "
        "random mixed W+A policies (BitOPs from uniform W2A2's to W5A5's, "
        "first/last at 8) plus the uniform ones in that range. Seconds per evaluation on "
        "this machine, uncached. The rows so far (lenet5-mnist) were measured before LSQ's "
        "activations started at the least-MSE step (`quantizer.activation.step_init=lsq`, "
        "the default until 2026-11-29), proxies and fine-tunes alike.",
        "",
    ]
    header = ["pair", "proxy", "Kendall tau", "Spearman", "top-5 recall", "s / eval"]
    header += ["s once (supernet)", "policies"]
    table = [
        [
            r["pair"],
            r["proxy"],
            f"{r['kendall_tau']:.2f}",
            f"{r['spearman']:.2f}",
            f"{r['top5_recall']:.1f}",
            f"{r['seconds_per_eval']:.2f}",
            "" if r.get("setup_seconds") is None else f"{r['setup_seconds']:.0f}",
            r["policies"],
        ]
        for r in results
    ]
    lines += [markdown_table(header, table), "", "![proxy vs fine-tuned](proxy_scatter.png)"]
    if additive:
        lines += [
            "",
            "How additive the fine-tuned accuracies are (the assumption of "
            "`search.model_every`'s model, `acc = c - sum_l (alpha_l 4^-w_l + beta_l 4^-a_l)`): "
            "each policy of the ground truth predicted by the model fitted on the others "
            "(leave-one-out), per fine-tune recipe of the ground truth:",
            "",
            markdown_table(
                ["pair", "fine-tune", "policies", "Kendall tau", "Spearman", "RMSE", "truth std"],
                [
                    [
                        r["pair"],
                        r["recipe"],
                        r["policies"],
                        f"{r['kendall_tau']:.2f}",
                        f"{r['spearman']:.2f}",
                        f"{r['rmse']:.2f}",
                        f"{r['truth_std']:.2f}",
                    ]
                    for r in additive
                ],
            ),
        ]
    for r in results:
        if r.get("uniform") and r["proxy"] == "supernet":
            lines += [
                "",
                f"{r['pair']}: the supernet at uniform WkAk (no retraining) against a model "
                "fine-tuned separately at those bits (the ground truth above):",
                "",
                markdown_table(
                    ["bits", "supernet val %", "fine-tuned val %", "fine-tuned test %"],
                    [
                        [
                            f"W{k}A{k}",
                            f"{v['supernet_val']:.2f}",
                            f"{v['finetuned_val']:.2f}",
                            f"{v['finetuned_test']:.2f}",
                        ]
                        for k, v in sorted(r["uniform"].items())
                    ],
                ),
            ]
    return "\n".join(lines)


def figure(panels: dict[tuple[str, str], tuple[list[float], list[float]]]) -> None:
    """Proxy score against fine-tuned test accuracy, a panel per (pair, proxy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(len(panels), 4)
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 3.0 * rows), squeeze=False)
    for ax, ((pair, proxy), (truth, scores)) in zip(axes.flat, panels.items(), strict=False):
        ax.scatter(truth, scores, s=14)
        ax.set_title(f"{pair}\n{proxy}", fontsize=8)
        ax.set_xlabel("fine-tuned test %", fontsize=8)
        ax.set_ylabel("proxy val %", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(FIGURE, dpi=110)
    plt.close(fig)


def main() -> None:
    from qsearch.env.fidelity import fidelity

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=PAIRS)
    parser.add_argument("--proxies", nargs="+", default=list(PROXIES), choices=PROXIES)
    parser.add_argument("--mixed", type=int, default=MIXED, help="mixed policies per pair")
    parser.add_argument(
        "--out", type=Path, default=RESULTS_DIR, help="results folder (not benchmarks/: no doc)"
    )
    parser.add_argument(
        "--additivity-only",
        action="store_true",
        help="only the leave-one-out additivity table, from the saved ground truth",
    )
    parser.add_argument(
        "--finetune-epochs",
        type=int,
        default=None,
        help="fine-tune epochs of the ground truth",
    )
    args = parser.parse_args()
    files = Files(args.out)
    additive = [row for pair in args.pairs for row in additivity(pair, files)]
    fresh_pairs = set(args.pairs)
    additive = [
        r for r in load_json(files.additivity, []) if r["pair"] not in fresh_pairs
    ] + additive
    save_json(files.additivity, additive)
    kept = load_json(files.results, [])
    if args.additivity_only:
        print(markdown_table(list(additive[0]), [list(r.values()) for r in additive]))
        if files.folder.resolve() == RESULTS_DIR.resolve():
            update_doc_section("proxy", summarise(kept, additive))
        return
    results, panels = [], {}
    for pair in args.pairs:
        rows = policy_rows(pair, files, args.mixed)
        truth = ground_truth(pair, rows, args.finetune_epochs, files)
        for proxy in args.proxies:
            scores, seconds, supernet = proxy_scores(pair, rows, proxy)
            setup_seconds = None if supernet is None else supernet["train_seconds"]
            score = fidelity(truth, scores)
            result = {
                "pair": pair,
                "proxy": proxy,
                "kendall_tau": round(score.kendall_tau, 4),
                "spearman": round(score.spearman, 4),
                "top5_recall": score.top5_recall,
                "seconds_per_eval": round(seconds, 3),
                "setup_seconds": None if setup_seconds is None else round(setup_seconds, 1),
                "policies": score.policies,
                "finetune_epochs": args.finetune_epochs,
                "truth_spread": round(float(np.ptp(truth)), 2),
            }
            if supernet is not None:
                result["uniform"] = supernet_vs_finetuned(
                    pair, rows, supernet, args.finetune_epochs, files
                )
            print(result, flush=True)
            results.append(result)
            panels[(pair, proxy)] = (truth, scores)
    fresh = {(r["pair"], r["proxy"]) for r in results}
    merged = [r for r in kept if (r["pair"], r["proxy"]) not in fresh] + results
    save_json(files.results, merged)
    if files.folder.resolve() == RESULTS_DIR.resolve():
        figure(panels)
        update_doc_section("proxy", summarise(merged, additive))


if __name__ == "__main__":
    main()

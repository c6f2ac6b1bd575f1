"""``qsearch search`` end to end on digits: outputs, budget errors, kill + resume, finetune."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qsearch.commands.search import dominating_references
from qsearch.env.recorder import Evaluation
from qsearch.quant.policy import Policy
from tests.conftest import run_qsearch

FAST = ["train.epochs=3", "evaluator.steps=5", "runtime.precision=fp32"]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_search_then_finetune_latest(tmp_path: Path) -> None:
    result = run_qsearch("search", "agent=random", "budget.evaluations=6", *FAST, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run = next((tmp_path / "outputs" / "search").iterdir())
    files = {p.name for p in run.iterdir()}
    assert {
        "policy.yaml",
        "episodes.csv",
        "evaluations.csv",
        "pareto.png",
        "bits.png",
        "summary.json",
    } <= files
    evaluations = _rows(run / "evaluations.csv")
    charged = [row for row in evaluations if row["reference"] == "False"]
    assert len(charged) == 6 and len({r["w_bits"] for r in charged}) == 6
    assert len(_rows(run / "episodes.csv")) == 6
    policy = Policy.load(run)
    summary = json.loads((run / "summary.json").read_text())
    assert policy.w_bits == summary["best"]["w_bits"]
    assert policy.w_bits[0] == policy.w_bits[-1] == 8  # first and last layer pinned
    assert policy.metadata["agent"] == "random" and policy.metadata["evaluations"] == 6
    assert set(summary["references"]) == {"W8", "W4", "W2"}
    assert summary["stopped_by"] == "budget"
    assert summary["agent_warning"] is None  # only RL agents judge their own learning
    assert "found" in result.stdout and "uniform W2" in result.stdout
    best = summary["best"]
    for label, ref in summary["references"].items():
        dominates = (
            ref["val_accuracy"] >= best["val_accuracy"]
            and ref["cost"] <= best["cost"]
            and (ref["val_accuracy"] > best["val_accuracy"] or ref["cost"] < best["cost"])
        )
        assert (label in summary["dominated_by"]) == dominates
        assert (run / f"policy_uniform_{label}.yaml").is_file() == dominates
        if dominates:
            assert Policy.load(run / f"policy_uniform_{label}.yaml").w_bits == ref["w_bits"]

    tuned = run_qsearch(
        "finetune",
        "policy=latest",
        "finetune.epochs=1",
        "train.epochs=3",
        "runtime.precision=fp32",
        cwd=tmp_path,
    )
    assert tuned.returncode == 0, tuned.stderr
    finetuned = next((tmp_path / "outputs" / "finetune").iterdir())
    assert Policy.load(finetuned).layers == policy.layers


def _evaluation(accuracy: float, cost: float, feasible: bool = True) -> Evaluation:
    return Evaluation(0, 0, [8, 2, 8], [8, 8, 8], accuracy, cost, feasible, accuracy, 0.0, False)


def test_dominating_references_are_the_pareto_better_ones() -> None:
    found = _evaluation(98.0, 10.0)
    references = {
        "cheaper, as good": _evaluation(98.0, 9.0),
        "better, as cheap": _evaluation(98.5, 10.0),
        "identical": _evaluation(98.0, 10.0),
        "better but dearer": _evaluation(99.0, 11.0),
        "cheaper but worse": _evaluation(97.0, 5.0),
        "over budget": _evaluation(99.0, 5.0, feasible=False),
    }
    assert dominating_references(found, references) == ["cheaper, as good", "better, as cheap"]
    # an infeasible found policy can be dominated by an infeasible reference
    infeasible = _evaluation(98.0, 10.0, feasible=False)
    assert "over budget" in dominating_references(infeasible, references)


def test_impossible_budget_fails_before_training(tmp_path: Path) -> None:
    result = run_qsearch("search", "budget.cost_fraction=0.01", *FAST, cwd=tmp_path)
    assert result.returncode == 2
    assert "cannot be met" in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "cache" / "float").exists()  # no float model was trained
    assert not list(tmp_path.glob("outputs/search/*"))


def test_haq_without_budget_is_a_user_error(tmp_path: Path) -> None:
    result = run_qsearch("search", "agent=haq", *FAST, cwd=tmp_path)
    assert result.returncode == 2 and "reward=haq needs a budget" in result.stderr


def test_killed_search_resumes_without_paying_twice(tmp_path: Path) -> None:
    args = ["search", "agent=releq", "budget.evaluations=14", "reward.every=step", *FAST]
    env = {**os.environ, "QSEARCH_CACHE_DIR": str(tmp_path / "cache")}
    process = subprocess.Popen(
        [sys.executable, "-m", "qsearch.cli", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    log = None
    deadline = time.time() + 240
    while time.time() < deadline:
        logs = list(tmp_path.glob("outputs/search/*/evaluations.csv"))
        if logs and len(_rows(logs[0])) >= 7:
            log = logs[0]
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert log is not None, "the search did not get going"
    run = log.parent
    before = {(r["w_bits"], r["a_bits"]) for r in _rows(log)}

    resumed = run_qsearch("search", f"resume={run}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    rows = _rows(log)
    keys = [(r["w_bits"], r["a_bits"]) for r in rows]
    assert len(keys) == len(set(keys))  # nothing evaluated twice
    assert before <= set(keys)  # nothing lost
    assert sum(r["reference"] == "False" for r in rows) == 14
    cache_lines = sum(
        len(p.read_text().splitlines()) for p in (tmp_path / "cache" / "evals").glob("*.jsonl")
    )
    assert cache_lines == len(keys)  # each policy was retrained exactly once
    assert (run / "policy.yaml").is_file()
    assert len(list((tmp_path / "outputs" / "search").iterdir())) == 1
    summary = json.loads((run / "summary.json").read_text())
    ppo_updates = summary["episodes"] // 4  # conf/agent/releq.yaml: episodes_per_update
    warned = summary["agent_warning"]
    assert (warned is None) == (ppo_updates >= 3)
    if warned:  # logged through rich's console (stdout), wrapped at its width
        assert f"{ppo_updates} PPO update(s)" in warned
        shown = " ".join((resumed.stdout + resumed.stderr).split())
        assert " ".join(warned.split()[:8]) in shown


def test_no_feasible_policy_is_an_error_and_writes_no_policy(tmp_path: Path) -> None:
    args = ["agent=uniform", "budget.evaluations=1", "budget.cost_fraction=0.5"]
    result = run_qsearch("search", *args, *FAST, cwd=tmp_path)  # uniform spends it on W8
    assert result.returncode == 2, result.stderr
    assert "no evaluated policy meets the cost budget" in result.stderr
    assert result.stderr.count("\n") == 1
    (run,) = tmp_path.glob("outputs/search/*")
    assert (run / "evaluations.csv").is_file() and not (run / "policy.yaml").exists()


def test_releq_with_activations_and_a_tight_budget_returns_a_feasible_policy(
    tmp_path: Path,
) -> None:
    args = [
        "agent=releq",
        "search.search_activations=true",
        "budget.cost_fraction=0.36",
        "budget.evaluations=6",
    ]
    result = run_qsearch("search", *args, *FAST, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (run,) = tmp_path.glob("outputs/search/*")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best"]["feasible"] and summary["best"]["cost_vs_8bit"] <= 0.36 + 1e-9
    assert any(a != 8 for a in summary["best"]["a_bits"][1:-1])  # activations were searched


def test_synthetic_search_reports_its_regret_without_data(tmp_path: Path) -> None:
    args = [
        "evaluator=synthetic",
        "model=resnet20",
        "dataset=cifar10",
        "agent=random",
        "search.search_activations=true",
        "budget.cost_fraction=0.2",
        "budget.evaluations=20",
        "search.model_after=10",
        "data_root=/nonexistent",
    ]
    result = run_qsearch("search", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (run,) = tmp_path.glob("outputs/search/*")
    summary = json.loads((run / "summary.json").read_text())
    # from the 10th charged evaluation on, every 5th is the accuracy model's: 10, 15, 20
    assert summary["model_proposals"]["evaluations"] == 2  # the 20th ends the budget
    synthetic = summary["synthetic"]
    assert synthetic["regret"] == synthetic["optimum"] - synthetic["found_true"] >= 0
    projection = json.loads((run / "summary.json").read_text())["projection"]
    # a quarter of the budget went first to uniform WxA policies within the budget, the
    # rest to random's 13 proposals and the model's 2
    with open(run / "evaluations.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [i for i, row in enumerate(rows) if row["agent"] == "model"] == [10, 15]
    for row in rows[:5]:
        w_searched, a_searched = row["w_bits"].split()[1:-1], row["a_bits"].split()[1:-1]
        assert len(set(w_searched)) == len(set(a_searched)) == 1 and row["feasible"] == "True"
    assert projection["proposals"] >= 13 and 0 <= projection["projected"] <= projection["proposals"]
    assert "regret" in result.stdout
    assert not (tmp_path / "cache" / "float").exists()  # no float model was trained


def test_synthetic_search_needs_a_budget(tmp_path: Path) -> None:
    result = run_qsearch("search", "evaluator=synthetic", cwd=tmp_path)
    assert result.returncode == 2 and "needs a cost budget" in result.stderr
    assert not list(tmp_path.glob("outputs/search/*"))


def test_uniform_budget_is_the_cost_of_that_uniform_policy(tmp_path: Path) -> None:
    args = ["agent=random", "budget.evaluations=4", "budget.uniform=W4A8", *FAST]
    result = run_qsearch("search", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (run,) = tmp_path.glob("outputs/search/*")
    summary = json.loads((run / "summary.json").read_text())
    policy = Policy.load(run / "policy.yaml")
    budget = policy.metadata["budget"]
    assert budget["uniform"] == "W4A8" and budget["cost_fraction"] is None
    cost = policy.metadata["cost"]
    uniform8 = cost["bitops"] / cost["bitops_vs_8bit"]
    # W4A8 on the searched layers, 8-bit on the pinned ones: half of 8-bit's searched
    # part, so the budget lies strictly between half and all of uniform 8-bit's cost
    assert 0.5 < summary["budget_cost"] / uniform8 < 1.0
    assert cost["bitops"] <= summary["budget_cost"] * (1 + 1e-9)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["budget.uniform=3bits"], "budget.uniform must look like W3A3"),
        (["budget.uniform=W9A3"], "budget.uniform bits must lie in 1..8"),
        (["budget.uniform=W3A3", "budget.cost_fraction=0.5"], "set one cost budget, not both"),
    ],
)
def test_bad_uniform_budget_is_one_line(overrides: list[str], message: str, tmp_path: Path) -> None:
    result = run_qsearch("search", *overrides, *FAST, cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

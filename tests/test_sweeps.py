"""Sweeps: a multirun on digits per launcher, ``qsearch report`` over it, relaunching it.

The joblib sweep (2 agents x 1 seed) runs in the fast suite; submitit's local executor and
a Ray cluster on loopback are slow tests. Ray needs its own venv (``make test-ray``).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from omegaconf import OmegaConf

from qsearch.cli import _resume_args, main
from qsearch.commands import report
from tests.conftest import run_qsearch

SMOKE = ["experiment=smoke_digits", "agent=random,uniform"]
RESULTS = ("summary.json", "episodes.csv", "evaluations.csv", "policy.yaml", "pareto.png")


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def _run_values(run: Path) -> dict[str, Any]:
    """What the report should say of a search run, read from the run's own files."""
    summary = json.loads((run / "summary.json").read_text())
    config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    episodes = _rows(run / "episodes.csv")
    charged = [r for r in _rows(run / "evaluations.csv") if r["reference"] == "False"]
    best = summary["best"]
    assert summary["evaluations"] == len(charged) and summary["episodes"] == len(episodes)
    # the smoke space has 3 uniform policies for a budget of 4 evaluations
    spent = len(charged) == config["budget"]["evaluations"]
    assert summary["stopped_by"] == ("budget" if spent else "agent (no new policies)")
    assert spent == (config["agent"]["name"] != "uniform")
    return {
        "agent": config["agent"]["name"],
        "seed": config["seed"],
        "metric": summary["metric"],
        "val_accuracy": best["val_accuracy"],
        "cost_vs_8bit": best["cost_vs_8bit"],
        "feasible": best["feasible"],
        "w_bits": " ".join(map(str, best["w_bits"])),
        "evaluations": len(charged),
        "episodes": len(episodes),
        "wall_seconds": float(episodes[-1]["wall_seconds"]),
    }


def _stats(values: list[float]) -> dict[str, float]:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "min": min(values), "max": max(values)}


def _markdown_tables(path: Path) -> list[list[dict[str, str]]]:
    """Every table of a Markdown file, as rows keyed by header."""
    tables: list[list[dict[str, str]]] = []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("| ") and (i == 0 or not lines[i - 1].startswith("|")):
            headers = [c.strip() for c in line.strip("|").split(" | ")]
            body = []
            for row in lines[i + 2 :]:
                if not row.startswith("|"):
                    break
                body.append(
                    dict(
                        zip(headers, [c.strip() for c in row.strip("|").split(" | ")], strict=True)
                    )
                )
            tables.append(body)
    return tables


def check_report(sweep: Path, stdout: str) -> None:
    """The report files in ``sweep`` agree with each run's own files, cell by cell."""
    runs = sorted(p.parent for p in sweep.glob("*/summary.json"))
    values = {str(run.relative_to(sweep)): _run_values(run) for run in runs}
    by_agent: dict[str, list[dict[str, Any]]] = {}
    for value in values.values():
        by_agent.setdefault(value["agent"], []).append(value)

    run_rows = {row["run"]: row for row in _rows(sweep / "report_runs.csv")}
    assert set(run_rows) == set(values)
    for name, value in values.items():
        row = run_rows[name]
        assert row["setting"] == f"agent={value['agent']}"
        for key in ("agent", "seed", "metric", "feasible", "w_bits", "evaluations", "episodes"):
            assert row[key] == str(value[key]), (name, key)
        for key in ("val_accuracy", "cost_vs_8bit", "wall_seconds"):
            assert float(row[key]) == pytest.approx(value[key], rel=1e-12), (name, key)
        assert row["test_accuracy"] == ""  # a search has no test accuracy

    groups = {row["setting"]: row for row in _rows(sweep / "report.csv")}
    assert set(groups) == {f"agent={agent}" for agent in by_agent}
    summary_md, runs_md = _markdown_tables(sweep / "report.md")
    markdown = {row["setting"]: row for row in summary_md}
    for agent, members in by_agent.items():
        group, md = groups[f"agent={agent}"], markdown[f"agent={agent}"]
        assert group["agent"] == md["agent"] == agent
        assert int(group["runs"]) == len(members)
        assert group["seeds"] == md["seeds"] == " ".join(str(m["seed"]) for m in members)
        feasible = f"{sum(m['feasible'] for m in members)}/{len(members)}"
        assert group["feasible"] == md["feasible"] == feasible
        for column, digits, header in (
            ("val_accuracy", 2, "val acc %"),
            ("cost_vs_8bit", 3, "cost vs 8-bit"),
            ("evaluations", 0, "evaluations"),
            ("wall_seconds", 1, "wall s"),
        ):
            stats = _stats([m[column] for m in members])
            for stat, expected in stats.items():
                assert float(group[f"{column}_{stat}"]) == pytest.approx(expected, abs=1e-12)
            text = f"{stats['mean']:.{digits}f}"
            if len(members) > 1:
                text += f" ± {stats['std']:.{digits}f}"
            assert md[header].startswith(text), (agent, header)
        assert group["test_accuracy_mean"] == ""
        assert f"agent={agent}" in stdout and md["val acc %"] in stdout
    assert [row["run"] for row in runs_md] == list(run_rows)
    for row in runs_md:
        assert row["val acc %"] == f"{float(run_rows[row['run']]['val_accuracy']):.2f}"
        assert row["w bits"] == run_rows[row["run"]]["w_bits"]
    assert (sweep / "report_pareto.png").read_bytes().startswith(b"\x89PNG")
    assert "report_pareto.png" in (sweep / "report.md").read_text()


def run_smoke_sweep(work: Path, *launcher: str, timeout: float = 300) -> Path:
    """The 2-agent digits sweep into ``work/multirun``; every run finished."""
    sweep = work / "multirun"
    result = run_qsearch(
        "search", "-m", *SMOKE, *launcher, f"hydra.sweep.dir={sweep}", cwd=work, timeout=timeout
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    done = sorted(p.parent.name for p in sweep.glob("*/.done"))
    assert done == [
        "0_agent=random,experiment=smoke_digits",
        "1_agent=uniform,experiment=smoke_digits",
    ]
    assert not list(sweep.glob("*/.started"))
    return sweep


def report_over(sweep: Path) -> str:
    result = run_qsearch("report", str(sweep), cwd=sweep.parent)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def joblib_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_smoke_sweep(tmp_path_factory.mktemp("sweep"), "hydra/launcher=joblib")


def test_report_matches_every_run_of_a_joblib_sweep(joblib_sweep: Path) -> None:
    check_report(joblib_sweep, report_over(joblib_sweep))


def test_relaunch_skips_finished_runs_and_resumes_the_interrupted_one(joblib_sweep: Path) -> None:
    work = joblib_sweep.parent
    sweep = work / "relaunched"
    shutil.copytree(joblib_sweep, sweep)
    finished, interrupted = sorted(p.parent for p in sweep.glob("*/.done"))
    original = json.loads((interrupted / "summary.json").read_text())
    # `interrupted` as a search killed after two evaluations: .started, no results yet
    marker = json.loads((interrupted / ".done").read_text())
    marker.pop("finished")
    (interrupted / ".started").write_text(json.dumps(marker))
    (interrupted / ".done").unlink()
    for name in ("summary.json", "policy.yaml", "pareto.png", "bits.png"):
        (interrupted / name).unlink()
    evaluations = (interrupted / "evaluations.csv").read_text().splitlines(keepends=True)
    (interrupted / "evaluations.csv").write_text("".join(evaluations[:3]))
    episodes = (interrupted / "episodes.csv").read_text().splitlines(keepends=True)
    (interrupted / "episodes.csv").write_text("".join(episodes[:3]))
    kept = [finished / name for name in (*RESULTS, ".done")]
    mtimes = {path: path.stat().st_mtime_ns for path in kept}
    hydra_files = {p: p.read_text() for p in (finished / ".hydra").iterdir()}

    # the sweep's command line again, on Hydra's basic launcher this time
    result = run_qsearch("search", "-m", *SMOKE, f"hydra.sweep.dir={sweep}", cwd=work)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    output = " ".join((result.stdout + result.stderr).split())
    assert "finished in an earlier launch of this sweep: skipped" in output
    assert "started in an earlier launch of this sweep: resuming it" in output
    assert {path: path.stat().st_mtime_ns for path in kept} == mtimes
    assert {p: p.read_text() for p in (finished / ".hydra").iterdir()} == hydra_files
    assert (interrupted / ".done").is_file() and not (interrupted / ".started").exists()
    # the search went on from its two evaluations (not from scratch) to the same policies
    resumed = (interrupted / "evaluations.csv").read_text().splitlines(keepends=True)
    assert resumed[:3] == evaluations[:3] and len(resumed) == len(evaluations)
    assert {r.split(",")[3] for r in resumed} == {r.split(",")[3] for r in evaluations}
    summary = json.loads((interrupted / "summary.json").read_text())
    assert summary["evaluations"] == original["evaluations"]
    assert summary["best"] == original["best"]  # exact numbers reloaded: ties rank the same


def test_resume_dir_relaunches_the_saved_sweep(joblib_sweep: Path) -> None:
    args = _resume_args("search", [f"resume={joblib_sweep}", "--info"])
    launcher = ["hydra/launcher=joblib", f"hydra.sweep.dir={joblib_sweep}", "-m", "--info"]
    assert args == [*SMOKE, *launcher]


def test_relaunch_with_other_overrides_is_refused(joblib_sweep: Path) -> None:
    work = joblib_sweep.parent
    sweep = work / "changed"
    shutil.copytree(joblib_sweep, sweep)
    run = sweep / "0_agent=random,experiment=smoke_digits"
    hydra_files = {p.name: p.read_text() for p in (run / ".hydra").iterdir()}
    multirun = (sweep / "multirun.yaml").read_text()
    result = run_qsearch(
        "search", "-m", "experiment=smoke_digits", "agent=random", "seed=1",
        f"hydra.sweep.dir={sweep}", cwd=work,
    )  # fmt: skip
    message = f"{run} holds a run of `experiment=smoke_digits agent=random` with another config"
    assert result.returncode == 2 and message in result.stderr
    assert {p.name: p.read_text() for p in (run / ".hydra").iterdir()} == hydra_files
    assert (sweep / "multirun.yaml").read_text() == multirun  # the sweep's, not the refused one


def _fake_search_run(root: Path, agent: str, seed: int, accuracy: float, cost: float) -> None:
    run = root / f"{agent}_{seed}"
    (run / ".hydra").mkdir(parents=True)
    config = {"seed": seed, "agent": {"name": agent}, "model": {"name": "lenet5"}}
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (run / ".hydra" / "overrides.yaml").write_text(
        yaml.safe_dump([f"agent={agent}", f"seed={seed}"])
    )
    (run / ".hydra" / "hydra.yaml").write_text(
        yaml.safe_dump({"hydra": {"job": {"name": "search"}}})
    )
    best = {
        "val_accuracy": accuracy,
        "cost_vs_8bit": cost,
        "feasible": cost <= 0.5,
        "w_bits": [8, 4, 8],
    }
    summary = {"best": best, "metric": "bitops", "evaluations": 10 + seed, "episodes": 2}
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "episodes.csv").write_text(f"episode,wall_seconds\n0,1.0\n1,{2.0 + seed}\n")


def test_report_summarises_seeds_as_mean_and_spread(tmp_path: Path) -> None:
    results = {
        "haq": [(70.0, 0.40), (72.5, 0.45), (71.0, 0.55)],
        "random": [(65.0, 0.50), (69.0, 0.35), (60.0, 0.49)],
    }
    for agent, runs in results.items():
        for seed, (accuracy, cost) in enumerate(runs):
            _fake_search_run(tmp_path, agent, seed, accuracy, cost)
    (tmp_path / "killed" / ".hydra").mkdir(parents=True)  # unfinished: left out
    (tmp_path / "killed" / ".hydra" / "config.yaml").write_text("seed: 0\n")

    report.run(OmegaConf.create({"dir": str(tmp_path), "out": str(tmp_path / "out")}))
    groups = {row["setting"]: row for row in _rows(tmp_path / "out" / "report.csv")}
    assert list(groups) == ["agent=haq", "agent=random"]
    for agent, runs in results.items():
        group = groups[f"agent={agent}"]
        assert group["runs"] == "3" and group["seeds"] == "0 1 2"
        assert group["feasible"] == f"{sum(cost <= 0.5 for _, cost in runs)}/3"
        for column, values in (
            ("val_accuracy", [a for a, _ in runs]),
            ("cost_vs_8bit", [c for _, c in runs]),
            ("evaluations", [10.0, 11.0, 12.0]),
            ("wall_seconds", [2.0, 3.0, 4.0]),
        ):
            for stat, expected in _stats(values).items():
                assert float(group[f"{column}_{stat}"]) == pytest.approx(expected), (agent, column)
    markdown = {row["setting"]: row for row in _markdown_tables(tmp_path / "out" / "report.md")[0]}
    haq = _stats([a for a, _ in results["haq"]])
    assert markdown["agent=haq"]["val acc %"] == (
        f"{haq['mean']:.2f} ± {haq['std']:.2f} ({haq['min']:.2f}–{haq['max']:.2f})"
    )
    assert len(_rows(tmp_path / "out" / "report_runs.csv")) == 6


def test_report_reads_finetune_metrics(tmp_path: Path) -> None:
    run = tmp_path / "0_policy=a"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("seed: 3\nmodel: {name: lenet5}\n")
    (run / ".hydra" / "hydra.yaml").write_text("hydra: {job: {name: finetune}}\n")
    metrics = {
        "accuracy": {"after_val": 97.5, "after_test": 97.0, "float_val": 98.0, "float_test": 98.1},
        "average_bits": {"w_per_param": 3.25},
        "quantizer": "lsq",
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    report.run(OmegaConf.create({"dir": str(tmp_path), "out": None}))
    (row,) = _rows(tmp_path / "report_runs.csv")
    assert row["command"] == "finetune" and row["seed"] == "3" and row["quantizer"] == "lsq"
    assert float(row["val_accuracy"]) == 97.5 and float(row["test_accuracy"]) == 97.0
    assert float(row["w_bits_per_param"]) == 3.25 and row["cost_vs_8bit"] == ""
    assert not (tmp_path / "report_pareto.png").exists()  # no cost: no accuracy-cost figure


def test_report_of_a_folder_without_runs_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "sweep" / "0_x" / ".hydra").mkdir(parents=True)
    (tmp_path / "sweep" / "0_x" / ".hydra" / "config.yaml").write_text("seed: 0\n")
    result = run_qsearch("report", str(tmp_path / "sweep"), cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "no finished qsearch runs in" in result.stderr and "(1 unfinished)" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["report", "/no/such/dir"], "report: /no/such/dir is not a directory"),
        (["report"], "dir must be set"),
        (["report", "a", "b"], "report takes one directory, got 'b' as well"),
        (["search", "-m", "hydra/launcher=nope"], "unknown hydra/launcher 'nope'"),
        (["search", "-m", "agent=random,uniform", "--cfg", "job"], "leave out -m"),
        (["search", "resume=somewhere", "seed=1"], "give no other overrides"),
        pytest.param(
            ["search", "-m", "hydra/launcher=slurm"],
            "submits to SLURM, but there is no sbatch",
            marks=pytest.mark.skipif(shutil.which("sbatch") is not None, reason="SLURM here"),
        ),
    ],
)
def test_sweep_user_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.skipif(_has_module("hydra_plugins.hydra_ray_launcher"), reason="ray plugin installed")
def test_missing_launcher_plugin_names_its_extra(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", "-m", "agent=random,uniform", "hydra/launcher=ray_cluster"]) == 2
    err = capsys.readouterr().err
    assert "hydra/launcher=ray_cluster needs its Hydra plugin: pip install -e '.[ray]'" in err


@pytest.mark.parametrize(
    ("launcher", "key", "value"),
    [
        ("joblib", "n_jobs", -1),
        ("submitit_local", "timeout_min", 60),
        ("slurm", "timeout_min", 240),
        ("slurm", "array_parallelism", 64),
        ("ray_cluster", "ray.init.address", "auto"),
    ],
)
def test_launcher_configs_compose(launcher: str, key: str, value: object) -> None:
    plugin = "hydra_ray_launcher" if launcher.startswith("ray") else "hydra_joblib_launcher"
    if not _has_module(f"hydra_plugins.{plugin}"):
        pytest.skip(f"{plugin} not installed")
    from qsearch.config import compose_config

    cfg = compose_config("search", [f"hydra/launcher={launcher}", *SMOKE])
    assert OmegaConf.select(cfg.hydra.launcher, key) == value


@pytest.mark.slow
def test_submitit_local_sweep(tmp_path: Path) -> None:
    sweep = run_smoke_sweep(tmp_path, "hydra/launcher=submitit_local")
    assert list(sweep.glob(".submitit/*"))  # submitit's own job folders
    check_report(sweep, report_over(sweep))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def ray_head(tmp_path: Path) -> Iterator[str]:
    """A Ray head on 127.0.0.1 for this test only; its address."""
    if not _has_module("ray") or not _has_module("hydra_plugins.hydra_ray_launcher"):
        pytest.skip("ray is not in this venv: `make test-ray` builds .venv-ray and runs this test")
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="qsray-", dir="/tmp")  # short: Ray's socket paths
    env = {
        **os.environ,
        "QSEARCH_CACHE_DIR": str(tmp_path / "cache"),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    head = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
            "--node-ip-address=127.0.0.1", f"--port={port}", "--include-dashboard=false",
            "--num-cpus=2", f"--temp-dir={temp}", "--disable-usage-stats",
        ],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            assert head.poll() is None, "ray start exited"
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "the Ray head did not come up in 120 s"
            time.sleep(1)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # `ray start --block` stops what it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_ray_cluster_sweep(ray_head: str, tmp_path: Path) -> None:
    sweep = run_smoke_sweep(
        tmp_path,
        "hydra/launcher=ray_cluster",
        f"hydra.launcher.ray.init.address={ray_head}",
        timeout=600,
    )
    check_report(sweep, report_over(sweep))

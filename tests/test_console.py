"""What a run prints (issue 22, item 7): one progress display per stage and the results on
the console, the per-epoch and per-evaluation lines in the run's log file (and on the
console with ``verbose=true``); a search flags policies whose retraining diverged."""

from __future__ import annotations

import csv
import re
import shlex
from pathlib import Path

import pytest

from qsearch.env.evaluator import EvalResult, standard_error
from qsearch.env.recorder import SearchRecorder
from qsearch.quant.policy import Policy
from qsearch.report.live import accuracy_text
from tests.conftest import run_qsearch
from tests.test_search_env import make_recorder, make_space

ROOT = Path(__file__).resolve().parents[1]
SCREEN_LINES = 50


def _make_run_commands() -> list[list[str]]:
    """The qsearch commands of the Makefile's ``run`` target, as argument lists."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("run:"))
    commands = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        words = shlex.split(line.strip())
        if words[0].endswith("/qsearch"):
            commands.append(words[1:])
    return commands


def test_make_run_output_fits_on_one_screen(tmp_path: Path) -> None:
    commands = _make_run_commands()
    assert [words[0] for words in commands] == ["search", "finetune"]
    printed = []
    for words in commands:  # a fresh cache: the float model is trained first, as on a new machine
        result = run_qsearch(*words, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        printed += (result.stdout + result.stderr).splitlines()
    assert len(printed) <= SCREEN_LINES, "\n".join(printed)
    text = "\n".join(printed)
    assert "search result" in text and "quantized, after" in text
    assert not re.search(r"epoch \d+/\d+ ", text)  # no per-epoch lines...
    assert "new best after" not in text
    [search_log] = tmp_path.glob("outputs/search/*/search.log")
    [finetune_log] = tmp_path.glob("outputs/finetune/*/finetune.log")
    assert "new best after" in search_log.read_text()  # ...they are in the log files
    assert len(re.findall(r"epoch \d+/30 ", finetune_log.read_text())) == 30


def test_verbose_shows_epoch_lines_on_the_console(tmp_path: Path) -> None:
    quiet = run_qsearch("train", "train.epochs=3", cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert "3 epochs in" in quiet.stdout  # one summary line per stage
    assert not re.search(r"epoch \d/3 ", quiet.stdout)
    [log] = tmp_path.glob("outputs/train/*/train.log")
    assert [int(n) for n in re.findall(r"epoch (\d)/3 ", log.read_text())] == [1, 2, 3]
    loud = run_qsearch("train", "train.epochs=3", "seed=1", "verbose=true", cwd=tmp_path)
    assert loud.returncode == 0, loud.stderr
    assert [int(n) for n in re.findall(r"epoch (\d)/3 ", loud.stdout)] == [1, 2, 3]


class _DivergesBelow4Bits:
    """Retraining 'diverges' (chance accuracy, flagged) when any weight has < 4 bits."""

    def __call__(self, policy: Policy) -> EvalResult:
        if min(policy.w_bits) < 4:
            return EvalResult(10.0, 0.0, cached=False, diverged=True)
        return EvalResult(90.0, 0.0, cached=False)


def test_recorder_flags_diverged_evaluations_and_reloads_them(tmp_path: Path) -> None:
    space = make_space()
    recorder: SearchRecorder = make_recorder(space, tmp_path, evaluator=_DivergesBelow4Bits())
    recorder.evaluate(space.uniform(2))
    recorder.evaluate(space.uniform(8))
    recorder.evaluate(space.uniform(3))
    assert recorder.diverged == 2
    with open(tmp_path / "evaluations.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["diverged"] for row in rows] == ["True", "False", "True"]
    resumed = make_recorder(space, tmp_path, resume=True, evaluator=_DivergesBelow4Bits())
    assert resumed.diverged == 2 and resumed.used == 3


def test_search_where_every_retraining_diverges_fails_in_one_line(tmp_path: Path) -> None:
    result = run_qsearch(
        "search",
        "agent=random",
        "budget.evaluations=3",
        "evaluator.lr=1e30",
        "evaluator.steps=30",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("qsearch: error: the retraining of all 3 evaluated")
    assert result.stderr.count("\n") == 1
    assert "3 diverged (scored at chance)" in result.stdout  # the live display says so
    [run] = tmp_path.glob("outputs/search/*")
    assert not (run / "policy.yaml").exists()
    with open(run / "evaluations.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["diverged"] for row in rows] == ["True"] * 3
    assert {float(row["accuracy"]) for row in rows} == {10.0}  # chance on 10 digits


class _Sampled:
    """90 % on 400 validation samples: a standard error of 100 sqrt(0.9 * 0.1 / 400) = 1.5."""

    def __call__(self, policy: Policy) -> EvalResult:
        return EvalResult(90.0, 0.0, cached=False, samples=400)


def test_accuracy_standard_error_is_logged_and_shown(tmp_path: Path) -> None:
    space = make_space()
    recorder = make_recorder(space, tmp_path, evaluator=_Sampled())
    evaluation = recorder.evaluate(space.uniform(4))
    assert evaluation.standard_error == pytest.approx(1.5)
    assert accuracy_text(evaluation) == "90.00 ± 1.50"
    with open(tmp_path / "evaluations.csv", newline="") as handle:
        [row] = list(csv.DictReader(handle))
    assert row["val_samples"] == "400" and row["accuracy_se"] == "1.500"
    resumed = make_recorder(space, tmp_path, resume=True, evaluator=_Sampled())
    [reloaded] = resumed.searched()
    assert reloaded.standard_error == pytest.approx(1.5)
    assert standard_error(97.0, 0) is None  # not a sample estimate (synthetic)
    assert standard_error(100.0, 50) == 0.0

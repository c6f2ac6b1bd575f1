"""The ``qsearch`` command line as a user runs it (subprocesses, real exit codes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from qsearch.cli import main
from tests.conftest import run_qsearch


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "usage: qsearch <command>" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["frobnicate"], "unknown command 'frobnicate'"),
        (["train", "model=nope"], "unknown model 'nope'"),
        (["train", "dataset=imagenet"], "unknown dataset 'imagenet'"),
        (["train", "--config-name", "x"], "--config-name is not supported"),
    ],
)
def test_user_errors_in_process(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("qsearch: error: ") and message in err
    assert err.count("\n") == 1


def test_missing_dataset_exits_2_and_leaves_no_run_dir(tmp_path: Path) -> None:
    result = run_qsearch("train", "dataset=mnist", f"data_root={tmp_path / 'none'}", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "mnist not found at" in result.stderr and "make data" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.glob("outputs/train/*"))  # the empty run dir was removed


def test_train_writes_checkpoint_and_metrics(tmp_path: Path) -> None:
    result = run_qsearch("train", "train.epochs=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dirs = list((tmp_path / "outputs" / "train").iterdir())
    assert len(run_dirs) == 1 and run_dirs[0].name.endswith("_lenet5_digits")
    files = {p.name for p in run_dirs[0].iterdir()}
    assert {"model.pt", "metrics.json", "train.log", "curves.png", ".hydra"} <= files
    assert "test accuracy" in result.stdout


def test_cfg_job_prints_composed_config(tmp_path: Path) -> None:
    result = run_qsearch("train", "model=resnet20", "--cfg", "job", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "_target_: qsearch.models.resnet_cifar.resnet20" in result.stdout
    assert not (tmp_path / "outputs").exists()

"""The epoch driver: a killed run of every kind (float, fine-tune, dynamic, supernet)
resumes to the numbers of an unkilled one."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from qsearch.commands.search import build_space
from qsearch.data import build_data
from qsearch.dynamic.settings import DynamicSettings, plan_dynamic
from qsearch.dynamic.train import DynamicSetup, train_dynamic
from qsearch.models import build_model, model_inventory
from qsearch.quant.layers import QuantizerSpec
from qsearch.quant.policy import Policy
from qsearch.supernet.train import train_supernet
from qsearch.train.finetune import finetune
from qsearch.train.fit import Monitor, TrainContext
from qsearch.train.float_model import load_float_weights, train_float
from qsearch.train.recipe import DynamicRecipe, FinetuneRecipe, SupernetRecipe
from qsearch.train.runtime import resolve_runtime
from tests.conftest import compose

EPOCHS = 3
COMMON = ("train.epochs=3", "train.lr=0.1", "runtime.precision=fp32", f"finetune.epochs={EPOCHS}")

Run = tuple[list[dict[str, float]], nn.Module]


class Crash(Exception):
    pass


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    """Configs of the three kinds of run and the float model they start from."""
    cache = tmp_path_factory.mktemp("cache")
    cfgs = {cmd: compose(cmd, f"cache_dir={cache}", *COMMON) for cmd in ("finetune", "dynamic")}
    data = build_data(cfgs["finetune"].dataset)
    runtime = resolve_runtime(cfgs["finetune"].runtime)
    model = build_model(cfgs["finetune"].model, data.info)
    load_float_weights(model, train_float(cfgs["finetune"], data, runtime))
    inventory = model_inventory(model, data.info)
    policy = Policy.uniform("lenet5", "digits", [layer.name for layer in inventory], 3, 3, 8)
    return cfgs, data, runtime, model, inventory, policy


def _float(setup, workdir: Path, monitor: Monitor) -> Run:
    cfgs, data, runtime, *_ = setup
    cfg = copy.deepcopy(cfgs["finetune"])
    cfg.cache_dir = str(workdir)
    cfg.train.epochs = EPOCHS
    checkpoint = train_float(cfg, data, runtime, monitor=monitor)
    model = load_float_weights(build_model(cfg.model, data.info), checkpoint)
    return checkpoint.history, model


def _finetune(setup, workdir: Path, monitor: Monitor) -> Run:
    cfgs, data, runtime, model, _, policy = setup
    cfg = cfgs["finetune"]
    spec = QuantizerSpec.from_config(cfg.quantizer)
    context = TrainContext(data, runtime, cfg.dataset, seed=0, workdir=workdir)
    result = finetune(
        model, policy, spec, FinetuneRecipe.from_config(cfg.finetune), context, monitor
    )
    return result.history, result.model


def _dynamic(setup, workdir: Path, monitor: Monitor) -> Run:
    cfgs, data, runtime, model, inventory, policy = setup
    cfg = cfgs["dynamic"]
    settings = DynamicSettings()
    spec = QuantizerSpec.from_config(cfg.quantizer)
    plan = plan_dynamic(policy, settings, spec, static_last=True)
    context = TrainContext(data, runtime, cfg.dataset, seed=0, workdir=workdir)
    dynamic = DynamicSetup(inventory, policy, plan, spec, settings)
    result = train_dynamic(
        model, dynamic, DynamicRecipe.from_config(cfg.finetune), context, monitor
    )
    return result.history, result.model


def _supernet(setup, workdir: Path, monitor: Monitor) -> Run:
    _, data, runtime, model, inventory, _ = setup
    cfg = compose("supernet", f"evaluator.epochs={EPOCHS}", "search.search_activations=true")
    space = build_space(cfg, inventory)
    context = TrainContext(data, runtime, cfg.dataset, seed=0, workdir=workdir)
    recipe = SupernetRecipe.from_config(cfg.evaluator)
    spec = QuantizerSpec.from_config(cfg.quantizer)
    result = train_supernet(model, space, spec, recipe, context, monitor)
    return result.history, result.model


RUNS: dict[str, Callable[..., Run]] = {
    "float": _float,
    "finetune": _finetune,
    "dynamic": _dynamic,
    "supernet": _supernet,
}


@pytest.mark.parametrize("kind", sorted(RUNS))
def test_resume_after_crash_matches_uninterrupted_run(kind: str, setup, tmp_path: Path) -> None:
    run = RUNS[kind]
    reference_history, reference = run(setup, tmp_path / "a", Monitor(log=False))

    def crash_after_second_epoch(epoch: int, row: dict) -> None:
        if epoch == 1:
            raise Crash

    with pytest.raises(Crash):
        run(setup, tmp_path / "b", Monitor(log=False, on_epoch_end=crash_after_second_epoch))
    assert list((tmp_path / "b").rglob("last.pt"))
    epochs_run: list[int] = []
    history, resumed = run(
        setup, tmp_path / "b", Monitor(log=False, on_epoch_end=lambda e, _: epochs_run.append(e))
    )
    assert epochs_run == [2]  # the third epoch only: the first two came from last.pt

    def timeless(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]

    assert len(history) == EPOCHS
    assert timeless(history) == timeless(reference_history)
    a, b = reference.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)

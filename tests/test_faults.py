"""Bad input and faults: every user mistake is one line, exit code 2, and no run dir.

:data:`CASES` drives the real CLI (subprocesses on the embedded digits) through each fault;
``scripts/bench_faults.py`` runs the same list and tabulates it. A case already asserted
by another test names it in ``covered_by`` and runs only in the benchmark. The tests below
the list check :mod:`qsearch.validation` itself on composed configs.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hydra.utils import get_class
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import DictConfig, OmegaConf

from qsearch.commands import COMMANDS
from qsearch.config import compose_config, config_dir, group_options
from qsearch.errors import UserError
from qsearch.quant.policy import POLICY_FORMAT
from qsearch.validation import RULES, check_ranges, check_value, leaf_keys, rule_for
from tests.conftest import GROUP_PACKAGE, compose_filled, run_qsearch

MARKER = "pwned"  # what the malicious checkpoints create when they are unpickled
TINY_SEARCH = (
    "search",
    "agent=random",
    "budget.evaluations=2",
    "train.epochs=1",
    "evaluator.steps=1",
    "search.reference_bits=[8]",
    "runtime.precision=fp32",
)


class _OpenOnLoad:
    """Pickles to ``open(marker, "w")``: unpickling it is what creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.marker, "w"))


def _write(name: str, text: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / name).write_text(text)

    return setup


def _mkdir(name: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / name).mkdir()

    return setup


def _policy_of_resnet20(tmp: Path) -> None:
    policy = {"format": POLICY_FORMAT, "model": "resnet20", "dataset": "digits"}
    policy["layers"] = {"conv1": {"w_bits": 4, "a_bits": 4}}
    (tmp / "resnet20.yaml").write_text(yaml.safe_dump(policy))


def _truncated_checkpoint(tmp: Path) -> None:
    torch.save({"state_dict": {"w": torch.randn(64, 64)}}, tmp / "full.pt")
    data = (tmp / "full.pt").read_bytes()
    (tmp / "truncated.pt").write_bytes(data[: len(data) // 2])


def _malicious_zip_checkpoint(tmp: Path) -> None:
    torch.save({"state_dict": _OpenOnLoad(tmp / MARKER)}, tmp / "evil.pt")


def _malicious_raw_pickle(tmp: Path) -> None:
    (tmp / "evil.pkl").write_bytes(pickle.dumps(_OpenOnLoad(tmp / MARKER)))


def _tear_the_eval_cache(tmp: Path) -> None:
    """A finished tiny search, then its evaluation cache torn: a half line, garbage, and a
    line of the wrong shape, as a crash or a second writer could leave them."""
    first = run_qsearch(*TINY_SEARCH, cwd=tmp)
    assert first.returncode == 0, first.stderr
    caches = list((tmp / "cache" / "evals").glob("*.jsonl"))
    assert caches, "the tiny search wrote no evaluation cache"
    for path in caches:
        with path.open("a") as handle:
            handle.write('{"key": "8 2 2 8", "accuracy": 9\n\x00\xff garbage\n[1, 2]\n{"key": "8')


def _cache_was_reused(tmp: Path) -> list[str]:
    """The second search read the torn cache's good lines instead of retraining."""
    summaries = sorted(tmp.glob("outputs/search/*/summary.json"))
    summary = json.loads(summaries[-1].read_text()) if summaries else {}
    counts = summary.get("evaluator", {})
    if counts.get("cache_hits") and not counts.get("computed"):
        return []
    return [f"the torn cache was not reused ({counts})"]


@dataclass(frozen=True)
class Fault:
    """One bad input (or a command that must keep working) and what the CLI must do.

    Attributes:
        name: short identifier (the pytest id and the benchmark row).
        args: ``qsearch`` arguments; ``{tmp}`` is the case's own empty working directory.
        code: the expected exit code.
        message: a fragment of stderr (of stdout when ``code`` is 0).
        setup: writes the case's input files into ``{tmp}`` first.
        absent: paths under ``{tmp}`` that must not exist afterwards (a marker file that
            only unpickling creates; a float checkpoint that only training creates).
        keeps_run_dir: the command may leave a run dir (it ran; not a user mistake).
        verify: further checks of ``{tmp}`` afterwards; returns the problems found.
        slow: takes more than a few seconds (trains or searches).
        covered_by: the test that already asserts this in the fast suite, if any.
    """

    name: str
    args: tuple[str, ...]
    code: int
    message: str
    setup: Callable[[Path], None] | None = None
    absent: tuple[str, ...] = ()
    keeps_run_dir: bool = False
    verify: Callable[[Path], list[str]] | None = None
    slow: bool = False
    covered_by: str | None = None


@dataclass
class Outcome:
    """What a fault case did, and which of its expectations failed."""

    code: int
    first_line: str
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


def _run_dirs(tmp: Path) -> set[Path]:
    """Folders under ``outputs/`` holding anything but folders (the empty
    ``outputs/<command>/`` a removed run dir leaves behind does not count)."""
    outputs = tmp / "outputs"
    folders = outputs.rglob("*") if outputs.is_dir() else iter(())
    return {p for p in folders if p.is_dir() and any(not q.is_dir() for q in p.rglob("*"))}


def run_fault(case: Fault, tmp: Path) -> Outcome:
    """Run ``case`` in the empty folder ``tmp`` and check every expectation."""
    if case.setup is not None:
        case.setup(tmp)
    before = _run_dirs(tmp)
    args = [arg.replace("{tmp}", str(tmp)) for arg in case.args]
    result = run_qsearch(*args, cwd=tmp, timeout=600)
    text = result.stdout if case.code == 0 else result.stderr
    lines = text.strip().splitlines()
    shown = next((line for line in lines if case.message in line), lines[0] if lines else "")
    outcome = Outcome(result.returncode, shown.strip())
    if result.returncode != case.code:
        outcome.problems.append(f"exit {result.returncode}, not {case.code}")
        outcome.first_line = (result.stderr.strip().splitlines() or [""])[-1]
    if case.message not in text:
        outcome.problems.append(f"no {case.message!r} in the output")
    if "Traceback" in result.stderr:
        outcome.problems.append("a traceback")
    if case.code == 2 and not (text.startswith("qsearch: error: ") and len(lines) == 1):
        outcome.problems.append("not one 'qsearch: error:' line")
    if not case.keeps_run_dir and _run_dirs(tmp) - before:
        outcome.problems.append("left a run dir")
    outcome.problems += [f"{path} exists" for path in case.absent if (tmp / path).exists()]
    if case.verify is not None:
        outcome.problems += case.verify(tmp)
    return outcome


def _help_and_cfg() -> Iterator[Fault]:
    """``--help`` and ``--cfg job`` of every command, required arguments left out."""
    for command in COMMANDS:
        yield Fault(f"{command} --help", (command, "--help"), 0, f"{command} is powered by Hydra")
        shown = {"evaluate": "checkpoint: ???", "export": "checkpoint: ???", "report": "dir: ???"}
        cfg_job = (command, "--cfg", "job")
        yield Fault(f"{command} --cfg job", cfg_job, 0, shown.get(command, "seed: 0"))


TEST_CLI = "tests/test_cli.py"
CASES: list[Fault] = [
    # issue 22, item 1-3: values out of range, refused before any work
    Fault("w_bits empty", ("search", "search.w_bits=[]"), 2, "search.w_bits=[] is out of range"),
    Fault("evaluations 0", ("search", "budget.evaluations=0"), 2, "budget.evaluations must be"),
    Fault("evaluations -3", ("search", "budget.evaluations=-3"), 2, "an integer >= 1, got -3"),
    Fault("evaluator steps -1", ("search", "evaluator.steps=-1"), 2, "evaluator.steps must be"),
    Fault("cost_fraction 0", ("search", "budget.cost_fraction=0"), 2, "number in (0, 1], got 0"),
    Fault("cost_fraction 1.5", ("search", "budget.cost_fraction=1.5"), 2, "(0, 1], got 1.5"),
    Fault("w_bits 1 with lsq", ("search", "search.w_bits=[1,2]"), 2, "2..8 for quantizer lsq's"),
    Fault("a_bits 9", ("search", "search.a_bits=[4,9]"), 2, "search.a_bits=[4, 9] is out of"),
    Fault("sweep value 0", ("search", "-m", "budget.evaluations=4,0"), 2, "got 0"),
    Fault("train lr 0", ("train", "train.lr=0"), 2, "train.lr must be a number > 0, got 0"),
    Fault("train epochs 0", ("train", "train.epochs=0"), 2, "train.epochs must be an integer"),
    Fault("batch size 0", ("train", "train.batch_size=0"), 2, "train.batch_size must be"),
    Fault("finetune lr < 0", ("finetune", "w_bits=4", "finetune.lr=-0.1"), 2, "finetune.lr"),
    Fault("finetune epochs 0", ("finetune", "w_bits=4", "finetune.epochs=0"), 2, "epochs must"),
    Fault("dynamic tau 0", ("dynamic", "w_bits=4", "dynamic.tau=0"), 2, "dynamic.tau must be"),
    Fault("threads 0", ("evaluate", "checkpoint=x.pt", "runtime.threads=0"), 2, "runtime.threads"),
    # item 5: training that diverges stops at once, saves nothing diverged, exit 2
    Fault(
        "finetune diverges",
        ("finetune", "w_bits=4", "a_bits=4", "finetune.lr=1e9", "finetune.epochs=2"),
        2,
        "diverged in epoch 1/2: the training loss became nan",
        slow=True,
    ),
    Fault(
        "float training diverges",
        ("train", "train.lr=1e9", "train.epochs=2"),
        2,
        "diverged in epoch 1/2",
        slow=True,
    ),
    Fault(
        "every search retraining diverges",
        ("search", "agent=random", "budget.evaluations=3", "evaluator.lr=1e30"),
        2,
        "the retraining of all 3 evaluated policies diverged",
        keeps_run_dir=True,  # evaluations.csv records the diverged policies
        covered_by="tests/test_console.py::"
        "test_search_where_every_retraining_diverges_fails_in_one_line",
    ),
    # item 4: a run dir that cannot be written
    Fault(
        "run dir under a file",
        ("train", "hydra.run.dir={tmp}/afile/run"),
        2,
        "afile is not a directory",
        setup=_write("afile", "not a folder"),
    ),
    Fault(
        "sweep dir under a file",
        ("search", "-m", "agent=random,uniform", "hydra.sweep.dir={tmp}/afile/sweep"),
        2,
        "hydra.sweep.dir=",
        setup=_write("afile", "not a folder"),
    ),
    Fault("run dir in /proc", ("train", "hydra.run.dir=/proc/qsearch/run"), 2, "not writable"),
    # item 6: help and config of every command, without its required arguments
    *_help_and_cfg(),
    # mistakes that already were one line, and must stay so
    Fault("unknown command", ("frobnicate",), 2, "unknown command", covered_by=TEST_CLI),
    Fault("unknown flag", ("train", "--frobnicate"), 2, "unknown option '--frobnicate'"),
    Fault("unknown model", ("train", "model=resnet21"), 2, "unknown model", covered_by=TEST_CLI),
    Fault("unknown key", ("train", "train.epoch=3"), 2, "unknown config key 'train.epoch'"),
    Fault("int expected", ("search", "seed=abc"), 2, "seed must be an integer, got 'abc'"),
    Fault("bool expected", ("train", "force=maybe"), 2, "force must be true or false"),
    Fault("number expected", ("train", "train.lr=fast"), 2, "train.lr must be a number"),
    Fault("bits 0", ("search", "search.w_bits=[0,4]"), 2, "search.w_bits=[0, 4] is out of"),
    Fault(
        "bits 9",
        ("finetune", "w_bits=9"),
        2,
        "w_bits=9 is out of range",
        covered_by="tests/test_finetune.py::test_finetune_evaluate_and_resume_cli",
    ),
    Fault("bits 33", ("finetune", "w_bits=4", "a_bits=33"), 2, "a_bits=33 is out of range"),
    Fault("cost bits 0", ("cost", "w_bits=0"), 2, "(allowed: null or bits in 1..8 or 32"),
    Fault(
        "impossible budget",
        ("search", "budget.cost_fraction=0.01"),
        2,
        "cannot be met",
        absent=("cache/float",),
        covered_by="tests/test_search_cli.py::test_impossible_budget_fails_before_training",
    ),
    Fault(
        "missing dataset",
        ("train", "dataset=mnist", "data_root={tmp}/none"),
        2,
        "mnist not found at",
        covered_by=TEST_CLI,
    ),
    Fault(
        "policy of another model",
        ("finetune", "policy={tmp}/resnet20.yaml"),
        2,
        "policy is for model 'resnet20', not 'lenet5'",
        setup=_policy_of_resnet20,
        absent=("cache/float",),
        slow=True,
    ),
    Fault(
        "non-YAML policy",
        ("cost", "policy={tmp}/bad.yaml"),
        2,
        "is not valid YAML",
        setup=_write("bad.yaml", "layers: [unclosed\n  - {"),
    ),
    Fault(
        "truncated checkpoint",
        ("evaluate", "checkpoint={tmp}/truncated.pt"),
        2,
        "cannot read checkpoint",
        setup=_truncated_checkpoint,
    ),
    Fault(
        "text checkpoint",
        ("export", "checkpoint={tmp}/text.pt"),
        2,
        "not a PyTorch file",
        setup=_write("text.pt", "this is not a checkpoint\n"),
    ),
    Fault(
        "malicious pickle in a .pt",
        ("evaluate", "checkpoint={tmp}/evil.pt"),
        2,
        "which qsearch does not unpickle",
        setup=_malicious_zip_checkpoint,
        absent=(MARKER,),
    ),
    Fault(
        "malicious raw pickle",
        ("export", "checkpoint={tmp}/evil.pkl"),
        2,
        "cannot read checkpoint",
        setup=_malicious_raw_pickle,
        absent=(MARKER,),
    ),
    Fault(
        "resume of a non-run dir",
        ("search", "resume={tmp}/notarun"),
        2,
        "is not a qsearch run directory",
        setup=_mkdir("notarun"),
    ),
    Fault(
        "torn eval cache lines",
        TINY_SEARCH,
        0,
        "policy: ",
        setup=_tear_the_eval_cache,
        keeps_run_dir=True,
        verify=_cache_was_reused,
        slow=True,
    ),
]


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(case, id=case.name, marks=[pytest.mark.slow] if case.slow else [])
        for case in CASES
        if case.covered_by is None
    ],
)
def test_fault(case: Fault, tmp_path: Path) -> None:
    outcome = run_fault(case, tmp_path)
    assert outcome.passed, f"{outcome.problems}: {outcome.first_line}"


def test_the_malicious_payload_is_live(tmp_path: Path) -> None:
    """The checkpoints above really would create the marker if they were unpickled."""
    _malicious_zip_checkpoint(tmp_path)
    torch.load(tmp_path / "evil.pt", weights_only=False)["state_dict"].close()
    assert (tmp_path / MARKER).exists()


# --- the range table on composed configs -----------------------------------------------


@cache
def _configs() -> dict[str, DictConfig]:
    """Every command's default config, and every group option in a command that has it."""
    configs = {command: compose_filled(command) for command in COMMANDS}
    groups = [p.name for p in config_dir().iterdir() if p.is_dir() and p.name != "hydra"]
    for group in sorted(set(groups) - {"shared"}):
        key = GROUP_PACKAGE.get(group, group)
        command = next((c for c, cfg in configs.items() if key in cfg), "search")
        for option in group_options(group):
            override = f"{group}@{key}={option}" if key != group else f"{group}={option}"
            configs[f"{command} {override}"] = compose_filled(command, override)
    return configs


def _numeric_leaves(node: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _numeric_leaves(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(node, list):
        if node and all(isinstance(v, int | float) and not isinstance(v, bool) for v in node):
            yield prefix
    elif isinstance(node, int | float) and not isinstance(node, bool):
        yield prefix


def test_every_numeric_setting_has_a_range_and_every_rule_a_setting() -> None:
    keys: set[str] = set()
    for name, cfg in _configs().items():
        plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
        for key in _numeric_leaves(plain):
            assert rule_for(key) is not None, f"{key} ({name}) has no row in validation.RULES"
        keys.update(leaf_keys(plain))
    for pattern, _ in RULES:
        assert any(fnmatchcase(key, pattern) for key in keys), f"no setting matches {pattern}"


def test_every_shipped_config_is_in_range() -> None:
    for label, cfg in _configs().items():
        try:
            check_ranges(cfg)
        except UserError as exc:
            pytest.fail(f"{label}: {exc}")


@pytest.mark.parametrize("option", group_options("quantizer"))
def test_every_quantizer_supports_the_bits_checked_without_importing_it(option: str) -> None:
    quantizer = _configs()[f"search quantizer={option}"].quantizer
    for role in ("weight", "activation"):
        cls = get_class(quantizer[role]._target_)
        for bits in range(2, 9):
            cls.check_bits(bits, role)


@settings(max_examples=60, deadline=None)
@given(
    option=st.sampled_from(group_options("quantizer")),
    bits=st.lists(st.integers(-2, 40), max_size=4),
)
def test_bits_rule_agrees_with_the_quantizer(option: str, bits: list[int]) -> None:
    cfg = _configs()[f"search quantizer={option}"]
    cls = get_class(cfg.quantizer.weight._target_)

    def supported(b: int) -> bool:
        try:
            cls.check_bits(b, "weight")
        except UserError:
            return False
        return 1 <= b <= 8

    valid = bool(bits) and all(supported(b) for b in bits)
    try:
        check_value("search.w_bits", bits, cfg)
    except UserError as exc:
        assert not valid and "is out of range (allowed: a non-empty list of bits" in str(exc)
    else:
        assert valid


@settings(deadline=None)
@given(st.integers(-(10**6), 10**6), st.floats(allow_nan=True, allow_infinity=True))
def test_budget_ranges(evaluations: int, fraction: float) -> None:
    cfg = _configs()["search"]
    checks = [
        ("budget.evaluations", evaluations, evaluations >= 1),
        ("evaluator.steps", evaluations, evaluations >= 0),
        ("budget.cost_fraction", fraction, 0 < fraction <= 1),
        ("train.lr", fraction, 0 < fraction < float("inf")),
    ]
    for key, value, valid in checks:
        try:
            check_value(key, value, cfg)
        except UserError as exc:
            assert not valid and str(exc).startswith(f"{key} must be ") and "\n" not in str(exc)
        else:
            assert valid, (key, value)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("dataset.recipe.search_steps=-1", "dataset.recipe.search_steps must be"),
        ("train.momentum=1", "train.momentum must be a number in [0, 1), got 1"),
        ("dataset.val_size=-2", "dataset.val_size must be an integer >= 0 (samples)"),
        ("agent=haq agent.tau=0", "agent.tau must be a number in (0, 1], got 0"),
        ("search.pin_first_last=1", "lsq's weights and activations)"),
        ("budget.cost_fraction=abc", "budget.cost_fraction must be null or a number"),
        ("search.max_episodes=0", "search.max_episodes must be null or an integer >= 1"),
        ("search.patience=-3", "search.patience must be null or an integer >= 1, got -3"),
        ("search.model_every=-1", "search.model_every must be an integer >= 0, got -1"),
        ("quantizer.activation.step_init=max", "step_init must be one of lsq, mse, got 'max'"),
        ("search.w_bits=[2,4],[]", "search.w_bits=[] is out of range"),
    ],
)
def test_the_typed_key_is_named(override: str, message: str) -> None:
    with pytest.raises(UserError, match=re.escape(message)):
        compose_config("search", override.split())

"""Gather the runs of a sweep into rows: one per run, and one per setting over seeds.

A run is a directory holding ``.hydra/config.yaml`` and a result: ``summary.json`` (with
``episodes.csv``) from ``qsearch search``, ``metrics.json`` from ``qsearch finetune``. Runs
that differ only in ``seed`` share a *setting*; :func:`aggregate` gives each setting's mean,
sample standard deviation, min and max over its runs. Everything here reads files and
returns plain data: ``qsearch report`` prints and writes it.
"""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from qsearch.errors import UserError

RESULT_FILES = ("summary.json", "metrics.json")
# Columns of a run row: identity first, then results (accuracies in %, cost relative to
# uniform 8-bit under the run's hardware metric, wall time in seconds).
RUN_COLUMNS = (
    "run",
    "command",
    "setting",
    "agent",
    "model",
    "dataset",
    "hardware",
    "quantizer",
    "seed",
    "metric",
    "val_accuracy",
    "cost_vs_8bit",
    "feasible",
    "w_bits",
    "a_bits",
    "float_val_accuracy",
    "test_accuracy",
    "float_test_accuracy",
    "w_bits_per_param",
    "evaluations",
    "episodes",
    "wall_seconds",
)
# The numeric columns summarised over the seeds of a setting.
STAT_COLUMNS = (
    "val_accuracy",
    "cost_vs_8bit",
    "test_accuracy",
    "w_bits_per_param",
    "evaluations",
    "wall_seconds",
)
STATS = ("mean", "std", "min", "max")
GROUP_COLUMNS = (
    "setting",
    "command",
    "agent",
    "model",
    "dataset",
    "hardware",
    "metric",
    "runs",
    "seeds",
    "feasible",
    *(f"{column}_{stat}" for column in STAT_COLUMNS for stat in STATS),
)


@dataclass(frozen=True)
class Run:
    """One finished run: where it is, how it was configured, and what it wrote."""

    path: Path
    name: str  # the run dir relative to the gathered folder
    command: str
    overrides: tuple[str, ...]
    config: dict[str, Any]  # .hydra/config.yaml, interpolations left as written
    summary: dict[str, Any] | None  # summary.json (search)
    metrics: dict[str, Any] | None  # metrics.json (finetune)
    episodes: list[dict[str, str]]  # episodes.csv rows (search)


def _natural_key(path: Path) -> list[Any]:
    """Sort ``2_x`` before ``10_x`` (Hydra's job numbers)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def find_runs(root: Path) -> tuple[list[Path], list[Path]]:
    """Run dirs at or below ``root``: ``(finished, unfinished)``, each in job order.

    A run dir holds ``.hydra/config.yaml``; it is finished once it holds one of
    :data:`RESULT_FILES`.
    """
    finished, unfinished = [], []
    for config in sorted(root.rglob(".hydra/config.yaml"), key=_natural_key):
        run = config.parent.parent
        (finished if any((run / f).is_file() for f in RESULT_FILES) else unfinished).append(run)
    return finished, unfinished


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"cannot read {path}: not valid JSON ({exc.msg})") from exc


def load_run(path: Path, root: Path) -> Run:
    """Read a run dir found by :func:`find_runs`."""
    hydra_dir = path / ".hydra"
    config = yaml.safe_load((hydra_dir / "config.yaml").read_text()) or {}
    overrides_file = hydra_dir / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
    hydra_file = hydra_dir / "hydra.yaml"
    command = "?"
    if hydra_file.is_file():
        command = str(yaml.safe_load(hydra_file.read_text())["hydra"]["job"]["name"])
    episodes: list[dict[str, str]] = []
    if (path / "episodes.csv").is_file():
        with open(path / "episodes.csv", newline="") as handle:
            episodes = [row for row in csv.DictReader(handle) if row.get("wall_seconds")]
    return Run(
        path=path,
        name=str(path.relative_to(root)) if path != root else ".",
        command=command,
        overrides=tuple(str(o) for o in overrides or []),
        config=config,
        summary=_read_json(path / "summary.json"),
        metrics=_read_json(path / "metrics.json"),
        episodes=episodes,
    )


def gather(root: Path) -> list[Run]:
    """Every finished run at or below ``root``.

    Raises:
        UserError: ``root`` holds no finished run (the message counts unfinished ones).
    """
    finished, unfinished = find_runs(root)
    if not finished:
        detail = f" ({len(unfinished)} unfinished)" if unfinished else ""
        raise UserError(
            f"no finished qsearch runs in {root}{detail}: expected run dirs with .hydra/ and "
            f"{' or '.join(RESULT_FILES)}"
        )
    return [load_run(path, root) for path in finished]


def override_key(override: str) -> str:
    """``+agent=haq`` -> ``agent``."""
    return override.split("=", 1)[0].lstrip("+~")


def _name(config: dict[str, Any], group: str) -> str:
    node = config.get(group)
    return str(node.get("name", "")) if isinstance(node, dict) else ""


def _bits(values: Sequence[int] | None) -> str:
    return " ".join(map(str, values)) if values else ""


def run_row(run: Run) -> dict[str, Any]:
    """The run's row: every column of :data:`RUN_COLUMNS` (blank where it does not apply).

    ``setting`` is left blank; :func:`run_rows` fills it.
    """
    row: dict[str, Any] = dict.fromkeys(RUN_COLUMNS, "")
    config = run.config
    row.update(
        run=run.name,
        command=run.command,
        agent=_name(config, "agent"),
        model=_name(config, "model"),
        dataset=_name(config, "dataset"),
        hardware=_name(config, "hardware"),
        quantizer=_name(config, "quantizer"),
        seed=config.get("seed", ""),
    )
    if run.summary is not None:
        best = run.summary["best"]
        row.update(
            metric=run.summary.get("metric", ""),
            val_accuracy=best["val_accuracy"],
            cost_vs_8bit=best["cost_vs_8bit"],
            feasible=best["feasible"],
            w_bits=_bits(best.get("w_bits")),
            a_bits=_bits(best.get("a_bits")),
            float_val_accuracy=run.summary.get("float_val_accuracy", ""),
            float_test_accuracy=run.summary.get("float_test_accuracy", ""),
            evaluations=run.summary.get("evaluations", ""),
            episodes=run.summary.get("episodes", ""),
        )
        if run.episodes:
            row["wall_seconds"] = float(run.episodes[-1]["wall_seconds"])
    if run.metrics is not None:
        accuracy = run.metrics.get("accuracy", {})
        row.update(
            val_accuracy=accuracy.get("after_val", ""),
            test_accuracy=accuracy.get("after_test", ""),
            float_val_accuracy=accuracy.get("float_val", ""),
            float_test_accuracy=accuracy.get("float_test", ""),
            w_bits_per_param=run.metrics.get("average_bits", {}).get("w_per_param", ""),
            quantizer=run.metrics.get("quantizer", row["quantizer"]),
        )
    return row


def varying_keys(runs: Iterable[Run]) -> list[str]:
    """Override keys (``seed`` excepted) whose value differs between ``runs``, in order."""
    values: dict[str, set[str | None]] = {}
    runs = list(runs)
    for run in runs:
        for override in run.overrides:
            values.setdefault(override_key(override), set())
    for key in values:
        for run in runs:
            found = [o.split("=", 1)[-1] for o in run.overrides if override_key(o) == key]
            values[key].add(found[0] if found else None)
    return [key for key, seen in values.items() if key != "seed" and len(seen) > 1]


def setting(run: Run, keys: Sequence[str]) -> str:
    """The run's values of the ``keys`` that vary, as ``agent=haq budget.evaluations=8``."""
    return " ".join(o.lstrip("+~") for o in run.overrides if override_key(o) in keys)


def run_rows(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """One row per run (see :func:`run_row`), with its setting filled in.

    The setting names the overrides that vary between ``runs`` (seed excepted), prefixed
    by the command where the runs mix commands; it is the command where nothing varies.
    """
    keys = varying_keys(runs)
    mixed = len({run.command for run in runs}) > 1
    rows = []
    for run in runs:
        row = run_row(run)
        label = setting(run, keys)
        row["setting"] = f"{run.command}: {label}" if mixed and label else label or run.command
        rows.append(row)
    return rows


def _numbers(rows: Sequence[dict[str, Any]], column: str) -> list[float]:
    return [float(r[column]) for r in rows if r[column] not in ("", None)]


def describe(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value), min and max; NaN when empty."""
    if not values:
        return dict.fromkeys(STATS, math.nan)
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def aggregate(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per setting (runs that differ only in seed), in order of first appearance.

    Each :data:`STAT_COLUMNS` column becomes ``<column>_mean/_std/_min/_max``; ``feasible``
    counts feasible runs as ``"2/3"``; identity columns keep their value where all runs of
    the setting agree and list the values otherwise.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["setting"], []).append(row)
    result = []
    for name, members in groups.items():
        group: dict[str, Any] = {"setting": name, "runs": len(members)}
        for column in ("command", "agent", "model", "dataset", "hardware", "metric"):
            values = list(dict.fromkeys(str(m[column]) for m in members))
            group[column] = ",".join(values)
        group["seeds"] = " ".join(str(m["seed"]) for m in members)
        feasible = [m["feasible"] for m in members if m["feasible"] != ""]
        group["feasible"] = f"{sum(map(bool, feasible))}/{len(feasible)}" if feasible else ""
        for column in STAT_COLUMNS:
            for stat, value in describe(_numbers(members, column)).items():
                group[f"{column}_{stat}"] = value
        result.append(group)
    return result


def spread(group: dict[str, Any], column: str, digits: int = 2) -> str:
    """``mean ± std (min–max)`` of a summarised column; blank when no run has it."""
    mean = group[f"{column}_mean"]
    if math.isnan(mean):
        return ""
    text = f"{mean:.{digits}f}"
    if group["runs"] > 1:
        text += (
            f" ± {group[f'{column}_std']:.{digits}f} "
            f"({group[f'{column}_min']:.{digits}f}–{group[f'{column}_max']:.{digits}f})"
        )
    return text


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table (``|`` in cells escaped)."""

    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(headers), line(["---"] * len(headers)), *map(line, rows)])

"""``qsearch report``: one table and one Pareto figure over the runs of a sweep."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from rich.table import Table

from qsearch.commands._common import console
from qsearch.report.figures import sweep_figure
from qsearch.report.gather import (
    GROUP_COLUMNS,
    RUN_COLUMNS,
    aggregate,
    gather,
    markdown_table,
    run_rows,
    spread,
)
from qsearch.utils.io import write_atomic, write_text


def run(cfg: DictConfig) -> None:
    """Gather the runs under ``cfg.dir``; print the table, write CSV, Markdown and figure."""
    root = Path(str(cfg.dir))
    out = Path(str(cfg.out)) if cfg.out else root
    rows = run_rows(gather(root))
    groups = aggregate(rows)
    headers, cells = _group_cells(groups)
    write_csv(out / "report_runs.csv", rows, RUN_COLUMNS)
    write_csv(out / "report.csv", groups, GROUP_COLUMNS)
    figure = None
    if any(row["cost_vs_8bit"] != "" for row in rows):
        figure = sweep_figure(out / "report_pareto.png", rows, groups, title=root.name)
    write_text(out / "report.md", _markdown(root, rows, groups, headers, cells, figure))
    table = Table(title=f"{root}: {len(rows)} runs, {len(groups)} settings (mean ± std (min–max))")
    for header in headers:
        table.add_column(header, overflow="fold")
    for row in cells:
        table.add_row(*row)
    console.print(table)
    written = ["report.md", "report.csv", "report_runs.csv"] + ([figure.name] if figure else [])
    console.print(f"report: {out} ({', '.join(written)})")


def write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> Path:
    """``rows`` as CSV with the header ``columns``, atomically; NaN is an empty cell."""

    def writer(tmp: Path) -> None:
        with open(tmp, "w", newline="") as handle:
            out = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
            out.writeheader()
            for row in rows:
                out.writerow({k: "" if _is_nan(v) else v for k, v in row.items()})

    return write_atomic(path, writer)


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _group_cells(groups: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Headers and text cells of the per-setting table; columns no setting fills are left out."""
    columns: list[tuple[str, Any]] = [
        ("setting", lambda g: g["setting"]),
        ("agent", lambda g: g["agent"]),
        ("model / dataset", lambda g: f"{g['model']} / {g['dataset']}"),
        ("hardware (metric)", lambda g: f"{g['hardware']} ({g['metric']})" if g["metric"] else ""),
        ("seeds", lambda g: g["seeds"]),
        ("feasible", lambda g: g["feasible"]),
        ("val acc %", lambda g: spread(g, "val_accuracy")),
        ("cost vs 8-bit", lambda g: spread(g, "cost_vs_8bit", 3)),
        ("test acc %", lambda g: spread(g, "test_accuracy")),
        ("w bits/param", lambda g: spread(g, "w_bits_per_param")),
        ("evaluations", lambda g: spread(g, "evaluations", 0)),
        ("wall s", lambda g: spread(g, "wall_seconds", 1)),
    ]
    cells = [[str(text(g)) for _, text in columns] for g in groups]
    keep = [i for i in range(len(columns)) if any(row[i].strip(" /") for row in cells)]
    return [columns[i][0] for i in keep], [[row[i] for i in keep] for row in cells]


def _markdown(
    root: Path,
    rows: Sequence[dict[str, Any]],
    groups: Sequence[dict[str, Any]],
    headers: list[str],
    cells: list[list[str]],
    figure: Path | None,
) -> str:
    run_headers = ["run", "seed", "val acc %", "cost vs 8-bit", "feasible", "w bits", "test acc %"]
    run_cells = [
        [
            r["run"],
            r["seed"],
            _fixed(r["val_accuracy"], 2),
            _fixed(r["cost_vs_8bit"], 3),
            r["feasible"],
            r["w_bits"],
            _fixed(r["test_accuracy"], 2),
        ]
        for r in rows
    ]
    keep = [i for i in range(len(run_headers)) if any(str(row[i]) for row in run_cells)]
    run_headers = [run_headers[i] for i in keep]
    run_cells = [[row[i] for i in keep] for row in run_cells]
    text = [
        f"# qsearch report: {root}",
        "",
        f"{len(rows)} runs in {len(groups)} settings. Per setting: mean ± sample std "
        "(min–max) over its runs (seeds). Accuracy in %, cost relative to uniform 8-bit "
        "under the run's hardware metric.",
        "",
        markdown_table(headers, cells),
        "",
    ]
    if figure is not None:
        text += [f"![accuracy vs cost]({figure.name})", ""]
    text += ["## Runs", "", markdown_table(run_headers, run_cells), ""]
    return "\n".join(text)


def _fixed(value: Any, digits: int) -> str:
    return "" if value == "" else f"{float(value):.{digits}f}"

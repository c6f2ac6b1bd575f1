"""Reliability benchmark: the CLI under bad input and damaged files, case by case.

    python scripts/bench_faults.py

Runs every case of ``tests/test_faults.py`` (:data:`tests.test_faults.CASES`, including
the ones other tests already cover and the slow ones) as a user would: ``qsearch`` in a
subprocess, in an empty folder, on the embedded digits. A case passes when the exit code
and message are the expected ones and, for a mistake, the message is one line with no
traceback and no run dir is left. Prints a table, writes ``benchmarks/faults.json`` and
the "faults" section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.test_faults
from _bench import markdown_table, save_json, update_doc_section
from tests.test_faults import CASES, Fault, run_fault


def _short(text: str, width: int = 90) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _expected(case: Fault) -> str:
    return f"exit {case.code}: {case.message}"


def run_case(case: Fault) -> dict[str, object]:
    """One case in a fresh folder: its expectation, what it got, pass/fail, seconds."""
    with tempfile.TemporaryDirectory(prefix="qsearch-fault-") as folder:
        start = time.perf_counter()
        outcome = run_fault(case, Path(folder))
        seconds = time.perf_counter() - start
    return {
        "case": case.name,
        "command": "qsearch " + " ".join(case.args),
        "expected": _expected(case),
        "got": f"exit {outcome.code}: {outcome.first_line.replace(folder, '{tmp}')}",
        "problems": outcome.problems,
        "passed": outcome.passed,
        "seconds": round(seconds, 2),
        "covered_by": case.covered_by,
    }


def main() -> int:
    console = Console(width=200)
    table = Table(title="qsearch under bad input and faults")
    for column in ("case", "expected", "got", "pass", "s"):
        table.add_column(column, overflow="fold")
    rows = []
    for case in CASES:
        row = run_case(case)
        rows.append(row)
        mark = "[green]pass[/]" if row["passed"] else f"[red]FAIL {row['problems']}[/]"
        table.add_row(
            case.name, _short(_expected(case)), _short(str(row["got"])), mark, str(row["seconds"])
        )
        console.print(f"{mark} {case.name} ({row['seconds']} s)")
    console.print(table)
    passed = sum(bool(row["passed"]) for row in rows)
    console.print(f"{passed}/{len(rows)} cases pass")
    save_json("faults", {"passed": passed, "cases": len(rows), "results": rows})
    body = "\n\n".join(
        [
            "## Faults and bad input (`python scripts/bench_faults.py`)",
            f"**{passed}/{len(rows)} cases pass.** Each case runs `qsearch` in a subprocess "
            "in an empty folder on the embedded digits (tiny budgets). A user mistake must "
            "exit with code 2 and one `qsearch: error:` line, no traceback, and leave no run "
            "dir; a malicious checkpoint must be refused without running its payload (the "
            "marker file it would create stays absent). Cases come from "
            "`tests/test_faults.py`, which runs them in the test suite.",
            markdown_table(
                ["case", "command", "expected", "got", "pass", "s"],
                [
                    [
                        row["case"],
                        f"`{_short(str(row['command']), 70)}`",
                        _short(str(row["expected"]), 60).replace("|", "\\|"),
                        _short(str(row["got"]), 80).replace("|", "\\|"),
                        "yes" if row["passed"] else "**no**",
                        row["seconds"],
                    ]
                    for row in rows
                ],
            ),
        ]
    )
    update_doc_section("faults", body)
    return 0 if passed == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())

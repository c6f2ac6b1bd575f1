"""The search's live view: a budget progress bar and the best-so-far table (rich)."""

from __future__ import annotations

import logging
from types import TracebackType

from rich.console import Console, Group
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from qsearch.env.recorder import Evaluation, SearchRecorder
from qsearch.utils.logs import DETAIL

log = logging.getLogger("qsearch.search")


def bits_text(bits: list[int]) -> str:
    return " ".join(str(b) for b in bits)


class SearchMonitor:
    """Call :meth:`update` after every evaluation (the recorder's ``on_evaluation`` hook)."""

    def __init__(
        self,
        agent: str,
        budget: int,
        metric: str,
        reference_cost: float,
        float_accuracy: float,
        console: Console | None = None,
    ) -> None:
        self.agent, self.metric = agent, metric
        self.reference_cost, self.float_accuracy = reference_cost, float_accuracy
        self.progress = Progress(
            TextColumn(f"[bold]search ({agent})"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TextColumn("evaluations"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[episodes]} episodes{task.fields[diverged]}"),
            console=console,
        )
        self.task = self.progress.add_task("search", total=budget, episodes=0, diverged="")
        self.live = Live(
            Group(self.progress, self._table(None)),
            console=console,
            refresh_per_second=4,
            transient=False,
        )
        self._best_key: tuple[list[int], list[int]] | None = None

    def __enter__(self) -> SearchMonitor:
        self.live.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.live.__exit__(exc_type, exc, tb)
        if not self.live.console.is_terminal:
            self.live.console.line()  # rich ends the last render with a newline on terminals only

    def _table(self, best: Evaluation | None) -> Table:
        table = Table(title="best so far", title_justify="left")
        for column in (
            "val acc %",
            "vs float",
            f"{self.metric} vs 8-bit",
            "feasible",
            "weight bits",
            "activation bits",
        ):
            table.add_column(column)
        if best is not None:
            table.add_row(
                accuracy_text(best),
                f"{best.accuracy - self.float_accuracy:+.2f}",
                f"{best.cost / self.reference_cost:.3f}",
                str(best.feasible),
                bits_text(best.w_bits),
                bits_text(best.a_bits),
            )
        return table

    def update(self, evaluation: Evaluation, recorder: SearchRecorder) -> None:
        diverged = recorder.diverged
        note = f", [red]{diverged} diverged (scored at chance)[/]" if diverged else ""
        self.progress.update(
            self.task, completed=recorder.used, episodes=recorder.episode, diverged=note
        )
        best = recorder.best
        key = (best.w_bits, best.a_bits) if best is not None else None
        if best is not None and key != self._best_key:
            self._best_key = key
            self.live.update(Group(self.progress, self._table(best)))
            log.info(
                "new best after %d evaluations: acc %.2f%%, %s %.3f of 8-bit, bits %s",
                recorder.used,
                best.accuracy,
                self.metric,
                best.cost / self.reference_cost,
                bits_text(best.w_bits),
                extra=DETAIL,
            )


def accuracy_text(evaluation: Evaluation) -> str:
    """``97.22 ± 0.48``: the accuracy with its standard error when it is a sample estimate."""
    se = evaluation.standard_error
    return f"{evaluation.accuracy:.2f}" if se is None else f"{evaluation.accuracy:.2f} ± {se:.2f}"

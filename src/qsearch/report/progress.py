"""Rich progress bars for long work: epochs, batches, search episodes."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class MetricsColumn(TextColumn):
    """Shows a task's ``loss`` and ``acc`` fields once they are set."""

    def __init__(self) -> None:
        super().__init__("")

    def render(self, task):  # type: ignore[no-untyped-def]
        loss, acc = task.fields.get("loss"), task.fields.get("acc")
        self.text_format = "" if loss is None else f"loss {loss:.4f}  acc {acc:.2f}%"
        return super().render(task)


def training_progress(console: Console | None = None, disable: bool = False) -> Progress:
    """A progress display for training: bar, count, time, and running loss/accuracy."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=30),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        MetricsColumn(),
        console=console,
        transient=True,
        disable=disable,
    )

"""What reaches the console: stage lines and results; per-epoch and per-evaluation lines
(``extra=DETAIL``) go to the run's log file only, unless ``verbose=true``."""

from __future__ import annotations

import logging

DETAIL = {"detail": True}  # ``log.info(..., extra=DETAIL)``: a line for the log file


class _HideDetail(logging.Filter):
    """Drops records logged with ``extra=DETAIL``."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "detail", False)


def quiet_console(verbose: bool) -> None:
    """Hide detail lines from the root logger's console handlers; file handlers keep them.

    Call after Hydra configured logging (inside the job); calling again replaces the choice.
    """
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            continue
        for existing in [f for f in handler.filters if isinstance(f, _HideDetail)]:
            handler.removeFilter(existing)
        if not verbose:
            handler.addFilter(_HideDetail())

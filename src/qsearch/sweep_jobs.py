"""Multirun jobs that survive a relaunch: ``.started`` / ``.done`` markers in each run dir.

A job of a multirun (``-m``) leaves ``.started`` and, once it finished, ``.done`` in its
run dir. Relaunching the sweep into the same ``hydra.sweep.dir`` (``qsearch <command>
resume=<multirun dir>`` does that) skips the finished jobs and continues the interrupted
ones, so no scheduler of our own is needed: any Hydra launcher gets this for free.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from qsearch.errors import UserError
from qsearch.utils.io import write_json, write_text

log = logging.getLogger(__name__)

STARTED, DONE = ".started", ".done"


def _sweep_job_dir() -> Path | None:
    """The run dir of the current multirun job; None outside a multirun."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return Path(HydraConfig.get().runtime.output_dir)


def _job_identity() -> dict[str, Any]:
    hydra_cfg = HydraConfig.get()
    return {"command": hydra_cfg.job.name, "overrides": list(hydra_cfg.overrides.task)}


def _multirun_file() -> Path:
    """The sweep's ``multirun.yaml``, which Hydra rewrites at every launch."""
    return Path(HydraConfig.get().sweep.dir) / "multirun.yaml"


def _hydra_files(run: Path) -> dict[str, str]:
    """The text of the ``.hydra/*.yaml`` files Hydra wrote for this job."""
    return {p.name: p.read_text() for p in sorted((run / ".hydra").glob("*.yaml"))}


def start_sweep_job(cfg: DictConfig) -> bool:
    """Mark a multirun job as started; True where it finished in an earlier launch.

    A job is the same as an earlier one in its run dir when its command and composed config
    are (however its overrides were spelled). One that started in an earlier launch but did
    not finish continues: a command with a ``resume`` key gets ``resume=<its run dir>``
    (``search`` reloads its evaluations). Hydra rewrites ``.hydra/`` and the sweep's
    ``multirun.yaml`` before the job starts; a finished or foreign run gets its own back,
    and a refused launch puts back the ``multirun.yaml`` of the sweep it would have changed.

    Raises:
        UserError: the run dir holds a run of another config (the sweep changed).
    """
    run = _sweep_job_dir()
    if run is None:
        return False
    identity = {**_job_identity(), "hydra": _hydra_files(run)}
    if _multirun_file().is_file():
        identity["multirun"] = _multirun_file().read_text()
    for marker in (run / DONE, run / STARTED):
        if not marker.is_file():
            continue
        previous = json.loads(marker.read_text())
        if _job_config(previous) != _job_config(identity):
            _restore_hydra_files(run, previous)
            if "multirun" in previous:  # the refused launch must not pose as the sweep
                write_text(_multirun_file(), previous["multirun"])
            raise UserError(
                f"{run} holds a run of `{' '.join(previous.get('overrides', []))}` with "
                f"another config; relaunch the sweep as it was, or pick a new hydra.sweep.dir"
            )
    if (run / DONE).is_file():
        _restore_hydra_files(run, json.loads((run / DONE).read_text()))
        log.info("%s finished in an earlier launch of this sweep: skipped", run)
        return True
    if (run / STARTED).is_file() and cfg.get("resume", "absent") is None:
        log.info("%s started in an earlier launch of this sweep: resuming it", run)
        cfg.resume = str(run)
    write_json(run / STARTED, identity)
    return False


def _job_config(marker: dict[str, Any]) -> tuple[str | None, str | None]:
    """What makes two jobs the same: the command and the composed config."""
    return marker.get("command"), marker.get("hydra", {}).get("config.yaml")


def _restore_hydra_files(run: Path, marker: dict[str, Any]) -> None:
    for name, text in marker.get("hydra", {}).items():
        write_text(run / ".hydra" / name, text)


def finish_sweep_job() -> None:
    """Leave ``.done`` in a finished multirun job's run dir."""
    run = _sweep_job_dir()
    if run is None:
        return
    started = json.loads((run / STARTED).read_text())
    write_json(run / DONE, {**started, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
    (run / STARTED).unlink()

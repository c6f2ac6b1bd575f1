"""``qsearch <command> [hydra overrides]``: dispatch a command to its Hydra app.

Each command is a Hydra application whose primary config is ``conf/<command>.yaml``, so
every Hydra feature works unchanged: ``--cfg job``, ``-m`` sweeps, launchers, run dirs.
Overrides are validated first so that user mistakes are one line and exit code 2.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import hydra
import rich
import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from qsearch import __version__
from qsearch.commands import COMMANDS
from qsearch.config import compose_config, config_dir
from qsearch.errors import USER_ERROR_EXIT_CODE, UserError

# Hydra's own flags; those listed in _FLAGS_WITH_VALUE consume the next argument.
_FLAGS_WITH_VALUE = {
    "-c",
    "--cfg",
    "-p",
    "--package",
    "-cp",
    "--config-path",
    "-cn",
    "--config-name",
    "-cd",
    "--config-dir",
    "--experimental-rerun",
}
_FORBIDDEN_FLAGS = {"-cp", "--config-path", "-cn", "--config-name"}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        f"qsearch {__version__}: mixed-precision quantization search",
        "",
        "usage: qsearch <command> [key=value ...] [--cfg job] [-m]",
        "",
        "commands:",
        *(f"  {name:<{width}}  {cmd.summary}" for name, cmd in COMMANDS.items()),
        "",
        "`qsearch <command> --help` lists a command's config groups and options;",
        f"configs live in {config_dir()}.",
    ]
    return "\n".join(lines)


def _fail(message: str) -> int:
    print(f"qsearch: error: {message}", file=sys.stderr)
    return USER_ERROR_EXIT_CODE


def _split_overrides(args: Sequence[str]) -> list[str]:
    """Return the ``key=value`` overrides in ``args``, skipping Hydra's own flags."""
    overrides: list[str] = []
    skip_next = False
    for arg in args:
        if skip_next:
            skip_next = False
        elif arg in _FORBIDDEN_FLAGS:
            raise UserError(f"{arg} is not supported: the command picks its primary config")
        elif arg.startswith("-"):
            skip_next = arg in _FLAGS_WITH_VALUE
        else:
            overrides.append(arg)
    return overrides


def _resume_args(command: str, args: list[str]) -> list[str]:
    """``resume=DIR`` re-runs DIR's own command in DIR: its saved overrides, its run dir."""
    overrides = _split_overrides(args)
    resume = [o for o in overrides if o.startswith("resume=")]
    if not resume:
        return args
    run = Path(resume[0].split("=", 1)[1])
    saved = run / ".hydra" / "overrides.yaml"
    hydra_cfg = run / ".hydra" / "hydra.yaml"
    if not saved.is_file() or not hydra_cfg.is_file():
        raise UserError(f"resume: {run} is not a qsearch run directory (no .hydra/ inside)")
    if yaml.safe_load(hydra_cfg.read_text())["hydra"]["job"]["name"] != command:
        raise UserError(f"resume: {run} is not a '{command}' run")
    if len(overrides) > 1:
        raise UserError("resume=DIR continues DIR with its own settings; give no other overrides")
    flags = [a for a in args if a not in overrides]
    previous = [o for o in yaml.safe_load(saved.read_text()) if not o.startswith("resume=")]
    return [*previous, f"resume={run}", f"hydra.run.dir={run}", *flags]


def _remove_empty_run_dir() -> None:
    """Delete the run dir of a job that failed on user input before writing any result."""
    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    hydra_files = {hydra_cfg.output_subdir, f"{hydra_cfg.job.name}.log"}
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= hydra_files:
        shutil.rmtree(run_dir, ignore_errors=True)


def _hydra_app(command: str, task: Callable[[DictConfig], object]) -> Callable[[], None]:
    @hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=command)
    def app(cfg: DictConfig) -> None:
        try:
            task(cfg)
        except UserError as exc:
            _remove_empty_run_dir()
            sys.exit(_fail(str(exc)))

    return app


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``qsearch`` console script; returns the process exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if args[0] == "--version":
        print(__version__)
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        return _fail(f"unknown command '{command}' (choose from: {', '.join(COMMANDS)})")
    try:
        rest = _resume_args(command, rest)
        compose_config(command, _split_overrides(rest))
        task = COMMANDS[command].load()
    except UserError as exc:
        return _fail(str(exc))
    if not sys.stdout.isatty():  # logs and CI: no 80-column wrapping of log lines
        rich.reconfigure(width=140)
    sys.argv = [f"qsearch {command}", *rest]
    _hydra_app(command, task)()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``qsearch <command> [hydra overrides]``: dispatch a command to its Hydra app.

Each command is a Hydra application whose primary config is ``conf/<command>.yaml``, so
every Hydra feature works unchanged: ``--cfg job``, ``-m`` sweeps, launchers, run dirs.
Overrides, value ranges (:mod:`qsearch.validation`) and the run dir are checked first, so
that user mistakes are one line and exit code 2, with no run dir left behind.

``resume=<multirun dir>`` relaunches a sweep; its finished jobs are skipped
(:mod:`qsearch.sweep_jobs`).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import hydra
import rich
import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from qsearch import __version__
from qsearch.commands import COMMANDS
from qsearch.config import compose_config, config_dir
from qsearch.errors import USER_ERROR_EXIT_CODE, UserError
from qsearch.utils.logs import quiet_console

log = logging.getLogger(__name__)

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
_MULTIRUN_FLAGS = {"-m", "--multirun"}
# Flags after which Hydra prints something and runs no job: required keys may stay unset.
_INFO_FLAGS = {"-h", "--help", "--hydra-help", "-c", "--cfg", "-i", "--info"}
_INFO_FLAGS |= {"-sc", "--shell-completion"}
# --info takes an optional topic.
_INFO_TOPICS = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}
_KNOWN_FLAGS = _FLAGS_WITH_VALUE | _MULTIRUN_FLAGS | _INFO_FLAGS
_KNOWN_FLAGS |= {"--version", "--resolve", "-r", "--run"}
# The optional extra (pyproject.toml) that brings each Hydra launcher plugin.
_LAUNCHER_EXTRAS = {
    "joblib": "sweep",
    "submitit_local": "sweep",
    "submitit_slurm": "sweep",
    "slurm": "sweep",
    "ray": "ray",
    "ray_aws": "ray",
    "ray_cluster": "ray",
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        f"qsearch {__version__}: mixed-precision quantization search",
        "",
        "usage: qsearch <command> [key=value ...] [--cfg job] [-m]",
        "       qsearch report <multirun dir> [out=DIR]",
        "",
        "commands:",
        *(f"  {name:<{width}}  {cmd.summary}" for name, cmd in COMMANDS.items()),
        "",
        "`qsearch <command> --help` lists a command's config groups and options;",
        f"configs live in {config_dir()}.",
        "Sweeps: `qsearch search -m agent=releq,haq seed=0,1,2 hydra.sweep.dir=DIR`",
        "(hydra/launcher=joblib|slurm|ray_cluster to scale out); `resume=DIR` relaunches a",
        "sweep, skipping its finished runs; `qsearch report DIR` tabulates and plots it.",
    ]
    return "\n".join(lines)


def _fail(message: str) -> int:
    print(f"qsearch: error: {message}", file=sys.stderr)
    return USER_ERROR_EXIT_CODE


def _flag(arg: str) -> str:
    """``--cfg=job`` -> ``--cfg``."""
    return arg.split("=", 1)[0]


def _split_overrides(args: Sequence[str], command: str = "<command>") -> list[str]:
    """Return the ``key=value`` overrides in ``args``, skipping Hydra's own flags.

    Raises:
        UserError: for a flag Hydra does not know, or one qsearch does not support.
    """
    overrides: list[str] = []
    skip_next = False
    for position, arg in enumerate(args):
        if skip_next:
            skip_next = False
        elif _flag(arg) in _FORBIDDEN_FLAGS:
            raise UserError(f"{arg} is not supported: the command picks its primary config")
        elif arg.startswith("-") and _flag(arg) not in _KNOWN_FLAGS:
            raise UserError(f"unknown option '{arg}' (see qsearch {command} --help)")
        elif arg.startswith("-"):
            following = args[position + 1] if position + 1 < len(args) else None
            skip_next = "=" not in arg and (
                arg in _FLAGS_WITH_VALUE or (arg in ("-i", "--info") and following in _INFO_TOPICS)
            )
        else:
            overrides.append(arg)
    return overrides


def _info_only(args: Sequence[str]) -> bool:
    """True when Hydra will print help, a config or information, and run no job."""
    return any(_flag(arg) in _INFO_FLAGS for arg in args)


def _check_run_dir(cfg: DictConfig, multirun: bool) -> None:
    """The run (or sweep) dir Hydra is about to create must be creatable and writable.

    The deepest existing folder on the path gets a throw-away temporary folder: the one
    test that also holds for root, read-only mounts and network file systems.
    """
    if cfg.hydra.output_subdir is None:
        return  # a command that writes no .hydra/ (report): the folder is its input
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    try:
        path = Path(str(OmegaConf.select(cfg, key, throw_on_missing=True)))
    except OmegaConfBaseException:
        return  # left to Hydra, which names the problem itself
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{key}={path} cannot be created: {existing} is not a directory")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".qsearch-probe-", dir=existing))
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(f"{key}={path} is not writable: {existing}: {reason}") from exc


def _resume_args(command: str, args: list[str]) -> list[str]:
    """``resume=DIR`` re-runs DIR's own command in DIR: its saved overrides, its run dir.

    DIR may be a multirun dir (``multirun.yaml`` inside): the sweep is launched again into
    it with its own overrides and launcher, and its finished jobs are skipped.
    """
    overrides = _split_overrides(args, command)
    resume = [o for o in overrides if o.startswith("resume=")]
    if not resume:
        return args
    run = Path(resume[0].split("=", 1)[1])
    if len(overrides) > 1:
        raise UserError("resume=DIR continues DIR with its own settings; give no other overrides")
    flags = [a for a in args if a not in overrides]
    if (run / "multirun.yaml").is_file():
        return _resume_sweep_args(command, run, flags)
    saved = run / ".hydra" / "overrides.yaml"
    hydra_cfg = run / ".hydra" / "hydra.yaml"
    if not saved.is_file() or not hydra_cfg.is_file():
        raise UserError(f"resume: {run} is not a qsearch run directory (no .hydra/ inside)")
    if yaml.safe_load(hydra_cfg.read_text())["hydra"]["job"]["name"] != command:
        raise UserError(f"resume: {run} is not a '{command}' run")
    previous = [o for o in yaml.safe_load(saved.read_text()) if not o.startswith("resume=")]
    return [*previous, f"resume={run}", f"hydra.run.dir={run}", *flags]


def _resume_sweep_args(command: str, sweep: Path, flags: list[str]) -> list[str]:
    """The command line that launches the multirun saved in ``sweep`` again, into ``sweep``."""
    hydra_cfg = yaml.safe_load((sweep / "multirun.yaml").read_text())["hydra"]
    if hydra_cfg["job"]["name"] != command:
        raise UserError(f"resume: {sweep} is not a '{command}' sweep")
    saved = hydra_cfg["overrides"]
    launcher = [o for o in saved["hydra"] if not o.startswith(("hydra.sweep.dir=", "hydra.mode="))]
    multirun = [] if _MULTIRUN_FLAGS & set(flags) else ["-m"]
    return [*saved["task"], *launcher, f"hydra.sweep.dir={sweep}", *multirun, *flags]


def _report_args(args: list[str]) -> list[str]:
    """``qsearch report DIR`` is ``qsearch report dir=DIR`` (a path may hold ``=``)."""
    converted: list[str] = []
    for position, arg in enumerate(args):
        flag_value = position > 0 and args[position - 1] in _FLAGS_WITH_VALUE
        positional = not arg.startswith("-") and ("=" not in arg or Path(arg).exists())
        positional = positional and not flag_value
        if positional and any(a.startswith("dir=") for a in [*args, *converted]):
            raise UserError(f"report takes one directory, got '{arg}' as well")
        if positional:
            quoted = arg.replace("\\", "\\\\").replace("'", "\\'")
            converted.append(f"dir='{quoted}'")
        else:
            converted.append(arg)
    return converted


def _check_report_dir(cfg: DictConfig) -> None:
    """The directory ``qsearch report`` reads must exist (Hydra would create it)."""
    folder = Path(str(cfg.dir))
    if not folder.is_dir():
        raise UserError(f"report: {folder} is not a directory")


def _launcher_hint(exc: UserError) -> UserError:
    """A missing launcher plugin names the extra that installs it."""
    message = str(exc)
    found = re.search(r"'hydra/launcher/([^']+)'", message)
    if found is None:
        return exc
    name = found.group(1)
    extra = _LAUNCHER_EXTRAS.get(name)
    if extra is not None:
        return UserError(
            f"hydra/launcher={name} needs its Hydra plugin: pip install -e '.[{extra}]' "
            "(see README: Sweeps and clusters)"
        )
    if "Could not find" in message:
        return UserError(f"unknown hydra/launcher '{name}' (see README: Sweeps and clusters)")
    return exc


def _check_launcher(cfg: DictConfig) -> None:
    """A SLURM launcher needs SLURM's commands on this machine (submitit calls them)."""
    target = str(cfg.hydra.launcher.get("_target_", ""))
    if target.endswith("SlurmLauncher") and shutil.which("sbatch") is None:
        raise UserError(
            "hydra/launcher=slurm submits to SLURM, but there is no sbatch here: launch from "
            "the cluster's login node (hydra/launcher=submitit_local runs it on this machine)"
        )


def _remove_empty_run_dir() -> None:
    """Delete the run dir of a job that failed on user input before writing any result."""
    from qsearch.sweep_jobs import STARTED  # imports torch: not before a job runs

    if not HydraConfig.initialized() or HydraConfig.get().output_subdir is None:
        return  # no .hydra/: the run dir is a folder the job did not create (report)
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    hydra_files = {hydra_cfg.output_subdir, f"{hydra_cfg.job.name}.log", STARTED}
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= hydra_files:
        shutil.rmtree(run_dir, ignore_errors=True)


def _no_job(cfg: DictConfig) -> None:
    """The task of ``--help`` and ``--cfg``, which Hydra never runs."""


def _hydra_app(command: str, task: Callable[[DictConfig], object]) -> Callable[[], None]:
    @hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=command)
    def app(cfg: DictConfig) -> None:
        from qsearch.sweep_jobs import finish_sweep_job, start_sweep_job  # imports torch

        quiet_console(bool(cfg.get("verbose", False)))
        try:
            if start_sweep_job(cfg):
                return
            task(cfg)
            finish_sweep_job()
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
        if command == "report":
            rest = _report_args(rest)
        rest = _resume_args(command, rest)
        multirun = bool(_MULTIRUN_FLAGS & set(rest))
        if multirun and {"-c", "--cfg"} & {_flag(arg) for arg in rest}:
            raise UserError("--cfg prints the config of one job: leave out -m")
        info_only = _info_only(rest)
        try:
            overrides = _split_overrides(rest, command)
            cfg = compose_config(command, overrides, require_all=not info_only)
        except UserError as exc:
            raise _launcher_hint(exc) from exc
        if not info_only:
            if command == "report":
                _check_report_dir(cfg)
            _check_run_dir(cfg, multirun)
        if multirun:
            _check_launcher(cfg)
        # --help and --cfg run no job: the command module (and torch) stays unimported
        task = _no_job if info_only else COMMANDS[command].load()
    except UserError as exc:
        return _fail(str(exc))
    if not sys.stdout.isatty():  # logs and CI: no 80-column wrapping of log lines
        rich.reconfigure(width=140)
    sys.argv = [f"qsearch {command}", *rest]
    _hydra_app(command, task)()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where the Hydra configs live, and validation of command-line overrides.

Validation happens before Hydra starts a job so that a typo is one line and exit code 2,
not a stack trace, and so that no run directory is created for a command that cannot run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, ValueType
from hydra.errors import HydraException, InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from qsearch.errors import UserError
from qsearch.validation import check_ranges, check_value

_PACKAGE_DIR = Path(__file__).resolve().parent


def config_dir() -> Path:
    """Return the directory holding the primary configs and config groups.

    An installed wheel carries ``qsearch/conf``; a source checkout uses the top-level
    ``conf/`` (editable installs).
    """
    bundled = _PACKAGE_DIR / "conf"
    if bundled.is_dir():
        return bundled
    return _PACKAGE_DIR.parent.parent / "conf"


def group_options(group: str) -> list[str]:
    """Return the option names of a config group (``model`` -> ``["lenet5", ...]``)."""
    folder = config_dir() / group
    return sorted(p.stem for p in folder.glob("*.yaml"))


def is_config_group(name: str) -> bool:
    """True where ``conf/<name>/`` is one of qsearch's config groups."""
    return (config_dir() / name).is_dir() and not name.startswith("hydra")


def _sweep_values(override: Override) -> list[str] | None:
    """The individual values of a choice/range sweep; None for globs and plain values."""
    if not override.is_sweep_override():
        return None
    if override.value_type == ValueType.GLOB_CHOICE_SWEEP:
        return None
    return [str(v) for v in override.sweep_string_iterator()]


def _check_group_choice(override: Override) -> None:
    group = override.key_or_group
    if override.is_delete() or not is_config_group(group):
        return
    values = _sweep_values(override)
    if values is None:
        value = override.value()
        if override.value_type == ValueType.GLOB_CHOICE_SWEEP or not isinstance(value, str):
            return
        values = [value]
    options = group_options(group)
    for value in values:
        if value not in options:
            raise UserError(f"unknown {group} '{value}' (choose from: {', '.join(options)})")


def _first_of_each_sweep(overrides: list[Override]) -> list[str]:
    """One concrete override list: each sweep replaced by its first value, globs dropped."""
    concrete: list[str] = []
    for override in overrides:
        if override.value_type == ValueType.GLOB_CHOICE_SWEEP:
            continue
        values = _sweep_values(override)
        if values is None:
            concrete.append(override.input_line)
        else:
            prefix = {"ADD": "+", "FORCE_ADD": "++"}.get(override.type.name, "")
            concrete.append(f"{prefix}{override.get_key_element()}={values[0]}")
    return concrete


def _one_line(exc: BaseException) -> str:
    """Hydra/OmegaConf errors are multi-line; keep what names the problem."""
    cause = exc.__cause__
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        first = str(cause).strip().splitlines()[0]
        if "not in struct" in first:
            return f"unknown config key '{cause.full_key}' (see --cfg job for the valid keys)"
        return f"{first} (key '{cause.full_key}')"
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return " ".join(lines[:2]) if lines else type(exc).__name__


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number"}


def _check_value_types(cfg: DictConfig, defaults: DictConfig, parsed: list[Override]) -> None:
    """A value override must keep the type of a numeric or boolean default (``seed=abc``)."""
    for override in parsed:
        key = override.key_or_group
        if override.is_delete() or is_config_group(key) or key.startswith("hydra"):
            continue
        default = OmegaConf.select(defaults, key, throw_on_missing=False)
        value = OmegaConf.select(cfg, key, throw_on_missing=False)
        if isinstance(default, bool):
            accepted: tuple[type, ...] = (bool,)
        elif isinstance(default, int):
            accepted = (int,)
        elif isinstance(default, float):
            accepted = (int, float)
        else:
            continue
        if value is not None and (
            not isinstance(value, accepted) or (bool not in accepted and isinstance(value, bool))
        ):
            raise UserError(f"{key} must be {_TYPE_NAMES[type(default)]}, got '{value}'")


def _check_sweep_values(cfg: DictConfig, parsed: list[Override]) -> None:
    """Every value of a sweep (``budget.evaluations=5,0 -m``) must be in range, not just the
    first one the config was composed with."""
    for override in parsed:
        key = override.key_or_group
        if not override.is_sweep_override() or is_config_group(key) or key.startswith("hydra"):
            continue
        try:
            values = list(override.sweep_iterator())
        except HydraException:
            continue  # an interval sweep: its values are an optimizer's to pick
        for value in values:
            check_value(key, value, cfg)


def compose_config(
    command: str, overrides: list[str], *, require_all: bool = True, ranges: bool = True
) -> DictConfig:
    """Compose ``conf/<command>.yaml`` with ``overrides`` (sweeps reduced to their first value).

    With ``ranges``, every numeric setting (and every value of a sweep) is checked against
    its range (:mod:`qsearch.validation`), so that a command that cannot run fails here,
    before any work and before Hydra makes a run dir. ``require_all=False`` lets keys that
    must be set (``checkpoint: ???``) stay unset, for ``--help`` and ``--cfg job``.

    Raises:
        UserError: for an unparsable override, an unknown group option or config key, a
            value whose type does not match a numeric/boolean default, a required key left
            unset, or a value out of its range.
    """
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as exc:
        raise UserError(f"cannot parse overrides: {_one_line(exc)}") from exc
    for override in parsed:
        _check_group_choice(override)
    concrete = _first_of_each_sweep(parsed)
    group_only = [
        o for o, p in zip(concrete, parsed, strict=False) if is_config_group(p.key_or_group)
    ]
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose(config_name=command, overrides=concrete, return_hydra_config=True)
            defaults = compose(config_name=command, overrides=group_only)
    except (HydraException, OmegaConfBaseException) as exc:
        raise UserError(_one_line(exc)) from exc
    single = [p for p in parsed if not p.is_sweep_override()]
    _check_value_types(cfg, defaults, single)
    job = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
    missing = sorted(OmegaConf.missing_keys(job))
    if missing and require_all:
        raise UserError(f"{missing[0]} must be set (add {missing[0]}=... to the command line)")
    if ranges:
        check_ranges(job, first=[p.key_or_group for p in single if not p.is_delete()])
        _check_sweep_values(job, parsed)
    return cfg


def instantiate_checked(node: DictConfig, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that reports user mistakes as one-line UserErrors.

    A UserError raised by the target comes through unwrapped; a ``???`` value left unset
    names the key to set.
    """
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, UserError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise
    except MissingMandatoryValue as exc:
        raise UserError(
            f"{exc.full_key} must be set (add {exc.full_key}=... to the command line)"
        ) from exc


def freeze_config(cfg: DictConfig, keys: tuple[str, ...]) -> str:
    """``cfg``'s ``keys`` as YAML text for a checkpoint.

    Interpolations stay unresolved, so ``${data_root}``/``${cache_dir}`` follow the
    settings of whoever loads the checkpoint (see :func:`thaw_config`).
    """
    import yaml

    return yaml.safe_dump(
        {key: OmegaConf.to_container(cfg[key], resolve=False) for key in keys}, sort_keys=False
    )


def thaw_config(
    text: str, data_root: str = "data", cache_dir: str = ".cache/qsearch"
) -> DictConfig:
    """The config frozen by :func:`freeze_config`, with this run's data and cache folders."""
    import yaml

    return OmegaConf.create(
        {"data_root": data_root, "cache_dir": cache_dir, **yaml.safe_load(text)}
    )


def job_config(command: str, overrides: list[str] | None = None) -> DictConfig:
    """The config ``qsearch <command> <overrides>`` would run with, minus Hydra's own node.

    For the Python API, scripts and tests: the CLI's composition and type checks. Ranges
    are left to :func:`qsearch.validation.check_ranges` (the CLI calls it), so that code
    under test can be handed a value the CLI would refuse and show its own check.
    """
    cfg = compose_config(command, list(overrides or []), ranges=False)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg

"""Range checks of a composed config, before any work: one table, key pattern -> rule.

Types are checked while composing (:mod:`qsearch.config`); this module checks values.
Every numeric setting of ``conf/`` with a valid range has a row in :data:`RULES` (a test
fails for a new one without); the first pattern matching a dotted key
(:func:`fnmatch.fnmatchcase`, ``*`` crosses dots) decides. A bad value is one line naming
the key and the allowed range::

    budget.evaluations must be an integer >= 1, got 0
    search.w_bits=[] is out of range (allowed: a non-empty list of bits in 2..8 for ...)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import cache
from typing import Any, Literal

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from qsearch.errors import UserError

FLOAT_BITS = 32  # a layer left in float (qsearch.quant.policy.FLOAT_BITS)
MAX_BITS = 8
# Bits every quantizer supports for both roles (tests/test_faults.py holds them to it):
# values in here need no quantizer import, which would load torch.
COMMON_BITS = range(2, MAX_BITS + 1)

BitsRole = Literal["weight", "activation", "both"]


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _show(value: Any) -> str:
    """A value as the user would type it (``null``, ``[]``, ``'abc'``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return str(value)


def _span(values: Iterable[int]) -> str:
    """``2..8``, or ``2..8 or 32 (float)``, or an explicit list where there are gaps."""
    values = sorted(set(values))
    low = [v for v in values if v != FLOAT_BITS]
    text = f"{low[0]}..{low[-1]}" if low == list(range(low[0], low[-1] + 1)) else str(low)
    return text + (f" or {FLOAT_BITS} (float)" if FLOAT_BITS in values else "")


@dataclass(frozen=True)
class Range:
    """A number (or, with ``each``, every number of a list) between ``low`` and ``high``.

    Bounds are inclusive unless ``low_open``/``high_open``; ``integer`` refuses fractions;
    ``nullable`` lets ``null`` through (the setting's "off" or "automatic");
    ``min_len`` is the shortest list ``each`` accepts.
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    nullable: bool = False
    each: bool = False
    min_len: int = 0

    def _ok(self, value: Any) -> bool:
        if not _number(value) or (self.integer and not isinstance(value, int)):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def error(self, value: Any, cfg: DictConfig) -> str | None:
        """What is wrong with ``value`` (``must be ...``), or None when it is in range."""
        if value is None and self.nullable:
            return None
        if self.each:
            ok = isinstance(value, list) and len(value) >= self.min_len
            ok = ok and all(self._ok(v) for v in value)
        else:
            ok = self._ok(value)
        return None if ok else f"must be {self.describe()}"

    def describe(self) -> str:
        """The allowed range in words: ``an integer >= 1``, ``a number in (0, 1]``."""
        kind = "an integer" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            text = f"{kind} in {left}{self.low:g}, {self.high:g}{right}"
        elif self.low is not None:
            text = f"{kind} {'>' if self.low_open else '>='} {self.low:g}"
        elif self.high is not None:
            text = f"{kind} {'<' if self.high_open else '<='} {self.high:g}"
        else:
            text = kind
        if self.each:
            plural = text.replace("an integer", "integers").replace("a number", "numbers")
            size = f"at least {self.min_len} " if self.min_len else ""
            text = f"a list of {size}{plural}"
        return f"null or {text}" if self.nullable else text


@dataclass(frozen=True)
class SizeOrFraction:
    """A number of samples (an integer >= 0) or a fraction of a split, in (0, 1)."""

    def error(self, value: Any, cfg: DictConfig) -> str | None:
        """``must be ...`` unless ``value`` is a count or a fraction."""
        count = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        fraction = isinstance(value, float) and 0 < value < 1
        return None if count or fraction else f"must be {self.describe()}"

    def describe(self) -> str:
        return "an integer >= 0 (samples) or a fraction in (0, 1)"


@dataclass(frozen=True)
class OneOf:
    """One of the words ``choices``."""

    choices: tuple[str, ...]

    def error(self, value: Any, cfg: DictConfig) -> str | None:
        return None if value in self.choices else f"must be {self.describe()}"

    def describe(self) -> str:
        return "one of " + ", ".join(self.choices)


@dataclass(frozen=True)
class Bits:
    """Bitwidths the composed quantizer supports for ``role`` (``both``: weights and
    activations, as a pinned layer gets); without a quantizer (``qsearch cost``) 1..8.

    ``choices`` is a list of bits (non-empty unless ``may_be_empty``) instead of one value;
    ``allow_float`` admits 32 (the layer stays float); ``nullable`` admits ``null``.
    """

    role: BitsRole
    choices: bool = False
    may_be_empty: bool = False
    allow_float: bool = False
    nullable: bool = False

    def allowed(self, cfg: DictConfig) -> tuple[list[int], str]:
        """The supported bits and whose they are (`` for quantizer lsq's weights``)."""
        quantizer = cfg.get("quantizer") if isinstance(cfg, DictConfig) else None
        roles = ("weight", "activation") if self.role == "both" else (self.role,)
        if quantizer is None:
            bits = list(range(1, MAX_BITS + 1))
            source = ""
        else:
            targets = [str(quantizer[role]._target_) for role in roles]
            supported = set.intersection(
                *(set(_quantizer_bits(t, r)) for t, r in zip(targets, roles, strict=True))
            )
            bits = sorted(supported)
            names = {"weight": "weights", "activation": "activations"}
            source = f" for quantizer {quantizer.name}'s {' and '.join(names[r] for r in roles)}"
        return bits + ([FLOAT_BITS] if self.allow_float else []), source

    def error(self, value: Any, cfg: DictConfig) -> str | None:
        """``is out of range (...)`` unless every bitwidth in ``value`` is supported."""
        if value is None and self.nullable:
            return None
        values = value if self.choices and isinstance(value, list) else [value]
        shaped = isinstance(value, list) == self.choices and (values or self.may_be_empty)
        if shaped and all(isinstance(v, int) and v in COMMON_BITS for v in values):
            return None  # every quantizer supports these: no need to import one
        allowed, source = self.allowed(cfg)
        if shaped and all(isinstance(v, int) and v in allowed for v in values):
            return None
        return f"is out of range (allowed: {self.describe(allowed)}{source})"

    def describe(self, allowed: list[int]) -> str:
        if not self.choices:
            text = f"bits in {_span(allowed)}"
        else:
            size = "a list" if self.may_be_empty else "a non-empty list"
            text = f"{size} of bits in {_span(allowed)}"
        return f"null or {text}" if self.nullable else text


@cache
def _quantizer_bits(target: str, role: str) -> tuple[int, ...]:
    """The bits in 1..8 that the quantizer class ``target`` supports for ``role``."""
    from hydra.utils import get_class

    cls = get_class(target)
    supported = []
    for bits in range(1, MAX_BITS + 1):
        try:
            cls.check_bits(bits, role)
        except UserError:
            continue
        supported.append(bits)
    return tuple(supported)


Rule = Range | SizeOrFraction | Bits

POSITIVE = Range(low=0, low_open=True)
NON_NEGATIVE = Range(low=0)
AT_LEAST_ONE = Range(low=1, integer=True)
COUNT = Range(low=0, integer=True)
UNIT = Range(low=0, high=1)  # [0, 1]
UNIT_OPEN_TOP = Range(low=0, high=1, high_open=True)  # [0, 1)
FRACTION = Range(low=0, high=1, low_open=True)  # (0, 1]

# First match wins: specific keys before the suffix patterns that would also match them.
RULES: list[tuple[str, Rule]] = [
    # budget and search space (qsearch search)
    ("budget.evaluations", AT_LEAST_ONE),
    ("budget.cost_fraction", Range(low=0, high=1, low_open=True, nullable=True)),
    ("search.w_bits", Bits("weight", choices=True)),
    ("search.a_bits", Bits("activation", choices=True)),
    ("search.reference_bits", Bits("weight", choices=True, may_be_empty=True)),
    ("search.fixed_a_bits", Bits("activation", allow_float=True)),
    ("search.pin_first_last", Bits("both", allow_float=True, nullable=True)),
    ("search.max_episodes", Range(low=1, integer=True, nullable=True)),
    ("search.patience", Range(low=1, integer=True, nullable=True)),
    ("search.uniform_start", UNIT),
    ("search.model_every", Range(low=0, integer=True)),
    ("search.model_after", Range(low=0, integer=True)),
    # a uniform policy given as bits (finetune, dynamic, cost)
    ("w_bits", Bits("weight", allow_float=True, nullable=True)),
    ("a_bits", Bits("activation", allow_float=True, nullable=True)),
    ("pin_first_last", Bits("both", allow_float=True, nullable=True)),
    # training recipes: train.*, finetune.*, dataset.recipe.*, evaluator.*
    ("*warmup_epochs", COUNT),
    ("*epochs", AT_LEAST_ONE),
    ("*batch_size", AT_LEAST_ONE),
    ("*steps", COUNT),
    ("*lr", POSITIVE),
    ("*learning_rate", POSITIVE),
    ("*weight_decay", NON_NEGATIVE),
    ("*momentum", UNIT_OPEN_TOP),
    ("*label_smoothing", UNIT_OPEN_TOP),
    ("*seed", COUNT),
    ("finetune.regularizer.lambda_max", NON_NEGATIVE),
    ("finetune.distill.alpha", UNIT),
    ("dataset.recipe.finetune_distill", UNIT),
    ("finetune.distill.temperature", POSITIVE),
    ("evaluator.train_subset", Range(low=1, integer=True, nullable=True)),
    ("evaluator.val_subset", Range(low=1, integer=True, nullable=True)),
    ("evaluator.bn_batches", COUNT),
    ("evaluator.distill_alpha", UNIT),
    ("evaluator.distill_temperature", POSITIVE),
    ("evaluator.random_policies", COUNT),  # evaluator=supernet: its sandwich rule
    # evaluator=synthetic
    ("evaluator.float_accuracy", Range(low=0, high=100, low_open=True)),
    ("evaluator.drop_at_3bit", POSITIVE),
    ("evaluator.spread", POSITIVE),
    ("evaluator.activation_share", UNIT_OPEN_TOP),
    ("evaluator.noise_std", NON_NEGATIVE),
    ("evaluator.estimate_error", NON_NEGATIVE),
    ("evaluator.noise_base", Range(low=1, low_open=True)),
    # datasets
    ("dataset.val_size", SizeOrFraction()),
    ("dataset.augment.crop_padding", COUNT),
    ("dataset.augment.cutout", COUNT),
    ("dataset.shape.num_classes", Range(low=1, integer=True, nullable=True)),
    ("dataset.shape.*", AT_LEAST_ONE),
    ("dataset.source.test_size", AT_LEAST_ONE),
    ("dataset.source.image_size", AT_LEAST_ONE),
    # models
    ("model.arch.width", POSITIVE),  # MobileNet's width multiplier
    # quantizers
    ("quantizer.*.kl_below_bits", COUNT),
    ("quantizer.*.init", Range(low=0, low_open=True, nullable=True)),
    ("quantizer.*.step_init", OneOf(("lsq", "mse"))),
    # hardware cost models
    ("hardware.lanes", AT_LEAST_ONE),
    ("hardware.bricks", AT_LEAST_ONE),
    ("hardware.batch", AT_LEAST_ONE),
    ("hardware.clock_mhz", POSITIVE),
    ("hardware.bytes_per_cycle", POSITIVE),
    ("hardware.energy_per_op_pj", POSITIVE),
    ("hardware.energy_per_byte_pj", POSITIVE),
    ("hardware.scale", POSITIVE),
    # rewards
    ("reward.a", POSITIVE),
    ("reward.b", POSITIVE),
    ("reward.threshold", UNIT),
    ("reward.scale", POSITIVE),
    ("reward.baseline_alpha", Range(low=0, high=1, nullable=True)),
    # agents
    ("agent.gamma", UNIT),
    ("agent.gae_lambda", UNIT),
    ("agent.clip_range", POSITIVE),
    ("agent.ent_coef", NON_NEGATIVE),
    ("agent.tau", FRACTION),
    ("agent.noise_sigma", NON_NEGATIVE),
    ("agent.noise_decay", FRACTION),
    ("agent.warmup_episodes", COUNT),
    ("agent.min_budget_fraction", FRACTION),
    ("agent.activation_scale_range", Range(low=1)),
    ("agent.moves_per_candidate", COUNT),
    ("agent.startup_trials", COUNT),
    ("agent.net_arch*", Range(low=1, integer=True, each=True, min_len=1)),
    ("agent.episodes_per_update", AT_LEAST_ONE),
    ("agent.imagined_episodes", COUNT),
    ("agent.imagine_after", AT_LEAST_ONE),
    ("agent.lstm_hidden_size", AT_LEAST_ONE),
    ("agent.buffer_size", AT_LEAST_ONE),
    ("agent.hutchinson_samples", AT_LEAST_ONE),
    ("agent.hessian_batches", AT_LEAST_ONE),
    ("agent.multipliers", AT_LEAST_ONE),
    ("agent.budget_fractions", AT_LEAST_ONE),
    ("agent.activation_scales", AT_LEAST_ONE),
    ("agent.max_trials_factor", AT_LEAST_ONE),
    ("agent.max_proposals_factor", AT_LEAST_ONE),
    # qsearch dynamic
    ("dynamic.offsets", Range(integer=True, each=True, min_len=2)),
    ("dynamic.controller.base_prob", Range(low=0, high=1, low_open=True, high_open=True)),
    ("dynamic.controller.*", AT_LEAST_ONE),
    ("dynamic.tau", POSITIVE),
    ("dynamic.target", POSITIVE),
    ("dynamic.alpha", NON_NEGATIVE),
    # runtime
    ("runtime.threads", Range(low=1, integer=True, nullable=True)),
]


def rule_for(key: str) -> Rule | None:
    """The rule of a dotted config key, or None for a key without a numeric range."""
    return next((rule for pattern, rule in RULES if fnmatchcase(key, pattern)), None)


def leaf_keys(node: Any, prefix: str = "") -> Iterator[str]:
    """Dotted keys of every leaf of a plain container (a list counts as one leaf)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from leaf_keys(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix


def _resolved(cfg: DictConfig, key: str) -> tuple[bool, Any]:
    """``(True, value)`` for a key whose value resolves; ``(False, None)`` for ``???`` or a
    broken interpolation (reported by whatever reads it)."""
    try:
        value = OmegaConf.select(cfg, key, throw_on_missing=True)
        if isinstance(value, DictConfig | ListConfig):
            value = OmegaConf.to_container(value, resolve=True)
    except OmegaConfBaseException:
        return False, None
    return True, value


def check_value(key: str, value: Any, cfg: DictConfig) -> None:
    """Raise a one-line UserError when ``value`` is out of ``key``'s range.

    Args:
        key: the dotted config key (``budget.evaluations``).
        value: its plain value (numbers, lists, None).
        cfg: the composed config, for rules that depend on other settings (the quantizer).
    """
    rule = rule_for(key)
    if rule is None:
        return
    problem = rule.error(value, cfg)
    if problem is None:
        return
    if isinstance(rule, Bits):  # as a policy's bits are reported (Policy.validate)
        raise UserError(f"{key}={_show(value)} {problem}")
    raise UserError(f"{key} {problem}, got {_show(value)}")


def check_ranges(cfg: DictConfig, first: Iterable[str] = ()) -> None:
    """Check every key of a composed job config (no ``hydra`` node) against :data:`RULES`.

    Keys in ``first`` (the ones the user overrode) are checked before the rest, so that a
    bad value is reported under the name the user typed rather than an interpolation of it.

    Raises:
        UserError: naming the first key out of range and its allowed range.
    """
    plain = OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False)
    keys = list(leaf_keys(plain))
    ordered = [k for k in first if k in keys] + [k for k in keys if k not in set(first)]
    for key in ordered:
        if rule_for(key) is None:
            continue
        found, value = _resolved(cfg, key)
        if found:
            check_value(key, value, cfg)

"""The ``dynamic`` config node and the plan it makes: which layers are static or dynamic.

The first ``controller.layers`` quantizable layers stay static (the controller reads their
output, so they run before any bit is chosen), and so does the last layer when
``pin_first_last`` is set. Every other layer of the base policy becomes dynamic, with
candidates ``(w + offset, a + offset)`` for each offset.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from qsearch.errors import UserError
from qsearch.quant.layers import QuantizerSpec
from qsearch.quant.policy import LayerBits, Policy

MIN_BITS, MAX_BITS = 1, 8


@dataclass(frozen=True)
class DynamicSettings:
    """``conf/dynamic.yaml``'s ``dynamic`` node, checked.

    Attributes:
        offsets: candidate bits are ``base + offset`` (K = len(offsets) >= 2).
        controller_layers: leading layers kept static and read by the controller.
        hidden: width of the controller's MLP hidden layer.
        pool: the controller average-pools conv features to ``pool x pool``.
        base_prob: the controller's initial probability of the base bits (offset 0; the
            other candidates share the rest). ``1 / K`` starts uniform.
        tau: Gumbel-Softmax temperature (Jang et al., ICLR 2017, eq. 2).
        target: target mean BitOPs per sample, relative to the static base policy.
        alpha: weight of the hinge ``max(0, cost - target)`` in the loss.
    """

    offsets: tuple[int, ...] = (-1, 0, 1)
    controller_layers: int = 1
    hidden: int = 64
    pool: int = 2
    base_prob: float = 0.5
    tau: float = 1.0
    target: float = 1.0
    alpha: float = 1.0

    def __post_init__(self) -> None:
        self.check()

    @classmethod
    def from_config(cls, node: DictConfig | Mapping[str, Any]) -> DynamicSettings:
        """Parse and check the ``dynamic`` node; a bad value is a one-line UserError."""
        raw = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
        assert isinstance(raw, Mapping)
        controller = raw.get("controller") or {}
        try:
            settings = cls(
                offsets=tuple(int(o) for o in raw["offsets"]),
                controller_layers=int(controller["layers"]),
                hidden=int(controller["hidden"]),
                pool=int(controller["pool"]),
                base_prob=float(controller["base_prob"]),
                tau=float(raw["tau"]),
                target=float(raw["target"]),
                alpha=float(raw["alpha"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"dynamic: malformed config ({type(exc).__name__}: {exc})") from exc
        return settings

    def check(self) -> None:
        """Raise a UserError for values no run can use."""
        if len(self.offsets) < 2 or len(set(self.offsets)) != len(self.offsets):
            raise UserError(
                f"dynamic.offsets must hold at least 2 distinct offsets, got {list(self.offsets)}"
            )
        positive = {
            "controller.layers": self.controller_layers,
            "controller.hidden": self.hidden,
            "controller.pool": self.pool,
            "tau": self.tau,
            "target": self.target,
        }
        for key, value in positive.items():
            if not value > 0:
                raise UserError(f"dynamic.{key} must be positive, got {value}")
        if self.alpha < 0:
            raise UserError(f"dynamic.alpha must be >= 0, got {self.alpha}")
        if not 0 < self.base_prob < 1:
            raise UserError(
                f"dynamic.controller.base_prob must lie in (0, 1), got {self.base_prob}"
            )

    def prior(self) -> list[float]:
        """Initial choice probabilities per candidate: ``base_prob`` at offset 0 and the
        rest shared evenly (uniform when no offset is 0)."""
        if 0 not in self.offsets:
            return [1 / len(self.offsets)] * len(self.offsets)
        rest = (1 - self.base_prob) / (len(self.offsets) - 1)
        return [self.base_prob if o == 0 else rest for o in self.offsets]

    def as_dict(self) -> dict[str, Any]:
        """The config node this was parsed from (for checkpoints)."""
        return {
            "offsets": list(self.offsets),
            "controller": {
                "layers": self.controller_layers,
                "hidden": self.hidden,
                "pool": self.pool,
                "base_prob": self.base_prob,
            },
            "tau": self.tau,
            "target": self.target,
            "alpha": self.alpha,
        }


@dataclass(frozen=True)
class DynamicPlan:
    """Static layers with their bits and dynamic layers with their K candidates, in
    forward order."""

    static: dict[str, LayerBits]
    dynamic: dict[str, tuple[LayerBits, ...]]

    @property
    def choices(self) -> int:
        """K, the number of candidates of every dynamic layer."""
        return len(next(iter(self.dynamic.values())))

    def static_policy(self, base: Policy) -> Policy:
        """The static layers as a policy (what :func:`quantize_model` applies)."""
        return Policy(base.model, base.dataset, dict(self.static))

    def to_dict(self) -> dict[str, Any]:
        """``{"static": {name: [w, a]}, "dynamic": {name: [[w, a], ...]}}`` (checkpoints)."""
        return {
            "static": {n: [b.w_bits, b.a_bits] for n, b in self.static.items()},
            "dynamic": {n: [[b.w_bits, b.a_bits] for b in c] for n, c in self.dynamic.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "checkpoint") -> DynamicPlan:
        """Parse :meth:`to_dict`'s output; anything malformed is a one-line UserError."""
        try:
            plan = cls(
                static={str(n): LayerBits(int(w), int(a)) for n, (w, a) in data["static"].items()},
                dynamic={
                    str(n): tuple(LayerBits(int(w), int(a)) for w, a in c)
                    for n, c in data["dynamic"].items()
                },
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UserError(f"{source}: malformed dynamic plan ({type(exc).__name__})") from exc
        counts = {len(candidates) for candidates in plan.dynamic.values()}
        if len(counts) != 1 or min(counts) < 2:
            raise UserError(
                f"{source}: malformed dynamic plan (every dynamic layer needs the same number "
                f"K >= 2 of candidates, got {sorted(counts)})"
            )
        return plan


def plan_dynamic(
    policy: Policy, settings: DynamicSettings, spec: QuantizerSpec, static_last: bool
) -> DynamicPlan:
    """Split ``policy``'s layers into static and dynamic ones and check every candidate.

    Candidate bits must lie in 1..8 and be supported by the quantizer ``spec``; anything
    else is a UserError raised before any training.
    """
    names = list(policy.layers)
    static_names = set(names[: settings.controller_layers])
    if static_last:
        static_names.add(names[-1])
    dynamic_names = [name for name in names if name not in static_names]
    if not dynamic_names:
        raise UserError(
            f"dynamic: no layer left to make dynamic ({len(names)} layers; the first "
            f"{settings.controller_layers} feed the controller"
            f"{' and the last is pinned' if static_last else ''})"
        )
    dynamic: dict[str, tuple[LayerBits, ...]] = {}
    for name in dynamic_names:
        base = policy.layers[name]
        candidates = tuple(LayerBits(base.w_bits + o, base.a_bits + o) for o in settings.offsets)
        for bits in candidates:
            if not all(MIN_BITS <= b <= MAX_BITS for b in (bits.w_bits, bits.a_bits)):
                raise UserError(
                    f"dynamic: layer '{name}' at w{base.w_bits}a{base.a_bits} with offsets "
                    f"{list(settings.offsets)} gets candidate w{bits.w_bits}a{bits.a_bits}; "
                    f"candidate bits must lie in {MIN_BITS}..{MAX_BITS}"
                )
            try:  # the quantizer's own range check
                spec.make("weight", bits.w_bits)
                spec.make("activation", bits.a_bits)
            except UserError as exc:
                raise UserError(
                    f"dynamic: layer '{name}' gets candidate w{bits.w_bits}a{bits.a_bits}: {exc}"
                ) from exc
        dynamic[name] = candidates
    static = {name: policy.layers[name] for name in names if name in static_names}
    return DynamicPlan(static=static, dynamic=dynamic)

"""The policy: per-layer weight and activation bitwidths, the artifact search hands to finetune.

A policy is a small YAML file a person can read and edit::

    format: qsearch-policy/1
    model: lenet5
    dataset: digits
    layers:                      # every quantizable layer, in forward order
      features.0: {w_bits: 8, a_bits: 8}
      features.3: {w_bits: 2, a_bits: 4}
      ...
    metadata: {accuracy: 97.5, cost: {...}, seed: 0, qsearch_version: 0.1.0}

``a_bits`` is the bitwidth of the layer's *input* activation. 32 means "not quantized".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from qsearch import __version__
from qsearch.errors import UserError
from qsearch.models.inventory import LayerInfo
from qsearch.utils.io import newest_match, write_text

POLICY_FORMAT = "qsearch-policy/1"
FLOAT_BITS = 32
ALLOWED_BITS = (*range(1, 9), FLOAT_BITS)


@dataclass(frozen=True)
class LayerBits:
    """Bitwidths of one layer: weights and input activations (32 = float)."""

    w_bits: int
    a_bits: int


@dataclass
class Policy:
    """Per-layer bitwidths of a model, in forward order, plus free-form metadata."""

    model: str
    dataset: str
    layers: dict[str, LayerBits]
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def uniform(
        cls,
        model: str,
        dataset: str,
        layer_names: Sequence[str],
        w_bits: int,
        a_bits: int,
        pin_first_last: int | None = None,
    ) -> Policy:
        """Every layer at ``w_bits``/``a_bits``; first and last at ``pin_first_last`` if set."""
        layers = {name: LayerBits(w_bits, a_bits) for name in layer_names}
        if pin_first_last is not None and layer_names:
            for name in (layer_names[0], layer_names[-1]):
                layers[name] = LayerBits(pin_first_last, pin_first_last)
        return cls(model=model, dataset=dataset, layers=layers)

    @classmethod
    def from_bits(
        cls,
        model: str,
        dataset: str,
        layer_names: Sequence[str],
        w_bits: Iterable[int],
        a_bits: Iterable[int],
    ) -> Policy:
        """A policy from parallel lists of per-layer weight and activation bits."""
        pairs = list(zip(w_bits, a_bits, strict=True))
        if len(pairs) != len(layer_names):
            raise ValueError(f"{len(pairs)} bit pairs for {len(layer_names)} layers")
        layers = {
            name: LayerBits(int(w), int(a)) for name, (w, a) in zip(layer_names, pairs, strict=True)
        }
        return cls(model=model, dataset=dataset, layers=layers)

    @property
    def w_bits(self) -> list[int]:
        return [bits.w_bits for bits in self.layers.values()]

    @property
    def a_bits(self) -> list[int]:
        return [bits.a_bits for bits in self.layers.values()]

    def key(self) -> str:
        """A canonical string of the bit configuration, e.g. ``"8/8 2/4 3/4 8/8"``."""
        return " ".join(f"{b.w_bits}/{b.a_bits}" for b in self.layers.values())

    def average_bits(self, inventory: Sequence[LayerInfo]) -> dict[str, float]:
        """Mean bits per layer (``w_mean``, ``a_mean``) and weight bits per parameter
        (``w_per_param``, i.e. weighted by each layer's weight count)."""
        params = {layer.name: layer.weight_params for layer in inventory}
        total = sum(params[name] for name in self.layers)
        return {
            "w_mean": sum(self.w_bits) / len(self.layers),
            "a_mean": sum(self.a_bits) / len(self.layers),
            "w_per_param": sum(params[n] * b.w_bits for n, b in self.layers.items()) / total,
        }

    def validate(
        self, inventory: Sequence[LayerInfo], model: str, allowed_bits: Iterable[int] = ALLOWED_BITS
    ) -> Policy:
        """Check the policy against a model's inventory; raise a one-line UserError if not.

        The model name, the set of layers and every bit value must match. Returns self.
        """
        if self.model != model:
            raise UserError(f"policy is for model '{self.model}', not '{model}'")
        expected = [layer.name for layer in inventory]
        missing = [name for name in expected if name not in self.layers]
        unknown = [name for name in self.layers if name not in expected]
        if unknown:
            raise UserError(
                f"policy names layer '{unknown[0]}', which model '{model}' does "
                f"not have (its layers: {', '.join(expected)})"
            )
        if missing:
            raise UserError(f"policy has no bits for layer '{missing[0]}' of model '{model}'")
        allowed = sorted(set(allowed_bits))
        for name, bits in self.layers.items():
            for kind, value in (("w_bits", bits.w_bits), ("a_bits", bits.a_bits)):
                if value not in allowed:
                    raise UserError(
                        f"layer '{name}': {kind}={value} is out of range "
                        f"(allowed: {_describe(allowed)})"
                    )
        self.layers = {name: self.layers[name] for name in expected}  # forward order
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": POLICY_FORMAT,
            "model": self.model,
            "dataset": self.dataset,
            "layers": {n: {"w_bits": b.w_bits, "a_bits": b.a_bits} for n, b in self.layers.items()},
            "metadata": {"qsearch_version": __version__, **self.metadata},
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "policy") -> Policy:
        """Parse a policy mapping; a malformed one is a one-line UserError naming ``source``."""
        if not isinstance(data, dict) or data.get("format") != POLICY_FORMAT:
            raise UserError(f"{source} is not a qsearch policy (expected format: {POLICY_FORMAT})")
        try:
            layers = {
                str(name): LayerBits(int(bits["w_bits"]), int(bits["a_bits"]))
                for name, bits in data["layers"].items()
            }
            return cls(
                model=str(data["model"]),
                dataset=str(data["dataset"]),
                layers=layers,
                metadata=dict(data.get("metadata") or {}),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UserError(f"{source} is malformed: {type(exc).__name__} {exc}") from exc

    def save(self, path: str | Path, comment: str | None = None) -> Path:
        """Write the policy as YAML, atomically."""
        header = f"# {comment}\n" if comment else ""
        body = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)
        return write_text(path, header + body)

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        """Read a policy YAML file (``yaml.safe_load``)."""
        path = Path(path)
        if path.is_dir():
            path = path / "policy.yaml"  # a search run directory
        if not path.is_file():
            raise UserError(f"policy file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise UserError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
        return cls.from_dict(data, source=str(path))


def _describe(allowed: Sequence[int]) -> str:
    low = [b for b in allowed if b != FLOAT_BITS]
    text = f"{min(low)}..{max(low)}" if low == list(range(min(low), max(low) + 1)) else str(low)
    return text + (f" or {FLOAT_BITS} for float" if FLOAT_BITS in allowed else "")


def parse_uniform(spec: str) -> tuple[int, int] | None:
    """``uniform_4`` -> (4, 4); ``uniform_w2a4`` -> (2, 4); anything else -> None."""
    if not spec.startswith("uniform_"):
        return None
    body = spec.removeprefix("uniform_")
    try:
        if body.startswith("w") and "a" in body:
            w, a = body[1:].split("a", 1)
            return int(w), int(a)
        return int(body), int(body)
    except ValueError:
        return None


def latest_search_policy(model: str, dataset: str, root: Path = Path("outputs/search")) -> Path:
    """The ``policy.yaml`` of the newest finished search of ``model`` on ``dataset``."""
    newest = newest_match(root, f"*_{model}_{dataset}/policy.yaml")
    if newest is None:
        raise UserError(
            f"policy=latest: no finished search of {model} on {dataset} under "
            f"{root} (run `qsearch search model={model} dataset={dataset}`)"
        )
    return newest


def resolve_policy(
    policy: str | None,
    w_bits: int | None,
    a_bits: int | None,
    *,
    model: str,
    dataset: str,
    inventory: Sequence[LayerInfo],
    pin_first_last: int | None,
) -> Policy:
    """The policy a command was asked for, validated against ``inventory``.

    ``policy`` is a YAML file, a search run directory (its ``policy.yaml``), ``latest``
    (the newest search of this model and dataset), or ``uniform_<bits>`` /
    ``uniform_w<w>a<a>``; without it, ``w_bits``/``a_bits`` make a
    uniform policy (first and last layer pinned to ``pin_first_last`` bits unless null).
    """
    names = [layer.name for layer in inventory]
    if policy is not None and (w_bits is not None or a_bits is not None):
        raise UserError("give either policy=... or w_bits=/a_bits=, not both")
    if policy is None and w_bits is None and a_bits is None:
        raise UserError(
            "no policy: add policy=<file or search run dir>, policy=uniform_4, or w_bits=4 a_bits=4"
        )
    uniform = (
        parse_uniform(policy)
        if policy is not None
        else (
            int(w_bits if w_bits is not None else a_bits),  # type: ignore[arg-type]
            int(a_bits if a_bits is not None else w_bits),  # type: ignore[arg-type]
        )
    )
    if uniform is not None:
        result = Policy.uniform(model, dataset, names, *uniform, pin_first_last=pin_first_last)
        result.metadata["source"] = f"uniform w{uniform[0]}a{uniform[1]}"
    elif policy is not None and policy.startswith("uniform"):
        raise UserError(f"cannot read '{policy}': use uniform_<bits> or uniform_w<w>a<a>")
    elif policy == "latest":
        result = Policy.load(latest_search_policy(model, dataset))
    else:
        result = Policy.load(str(policy))
    return result.validate(inventory, model)

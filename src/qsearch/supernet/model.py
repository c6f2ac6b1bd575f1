"""The supernet model: every quantized layer can run at any of its (w, a) bit choices.

Each layer keeps its float weights once and, per role, one quantizer per bitwidth
(:class:`SwitchableQuantizer`): with LSQ, one learned step size per layer per bitwidth,
like the switchable clipping levels of adaptive-bitwidth networks (Jin et al., "AdaBits",
CVPR 2020). :func:`~qsearch.quant.layers.set_policy_bits` switches every layer to a
policy's bits.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice

import torch
from torch import Tensor, nn

from qsearch.env.space import SearchSpace
from qsearch.errors import UserError
from qsearch.quant.base import Quantizer, Role
from qsearch.quant.bn import reestimate_bn
from qsearch.quant.layers import (
    QuantizerFactory,
    QuantizerSpec,
    calibrate,
    quant_layers,
    quantize_model,
    set_policy_bits,
)
from qsearch.quant.policy import Policy
from qsearch.train.loop import Batches, evaluate
from qsearch.train.runtime import Runtime


class SwitchableQuantizer(nn.Module):
    """One quantizer per bitwidth for one tensor of one layer; ``bits`` picks the one that
    runs. Each keeps its own state (LSQ: its step), initialized on its first use."""

    def __init__(
        self, factory: QuantizerFactory, role: Role, choices: Sequence[int], channels: int = 1
    ) -> None:
        super().__init__()
        self.role = role
        self.choices = sorted({int(b) for b in choices})
        self.quantizers = nn.ModuleDict(
            {str(b): factory(bits=b, role=role, channels=channels) for b in self.choices}
        )
        self.bits = self.choices[-1]

    @property
    def active(self) -> Quantizer:
        """The quantizer of the current bits."""
        return self.quantizers[str(self.bits)]  # type: ignore[return-value]

    def set_bits(self, bits: int) -> None:
        """Switch to ``bits`` (one of :attr:`choices`); nothing is re-initialized."""
        if int(bits) not in self.choices:
            raise UserError(
                f"the supernet has no {self.role} quantizer for {bits} bits "
                f"(its choices: {self.choices})"
            )
        self.bits = int(bits)

    def forward(self, x: Tensor) -> Tensor:
        return self.active(x)

    def extra_repr(self) -> str:
        return f"role={self.role}, choices={self.choices}, bits={self.bits}"


@dataclass(frozen=True)
class LayerChoices:
    """The bits a layer can take in the supernet: weights and input activations."""

    w: tuple[int, ...]
    a: tuple[int, ...]

    def covers(self, other: LayerChoices) -> bool:
        return set(other.w) <= set(self.w) and set(other.a) <= set(self.a)


def space_choices(space: SearchSpace) -> dict[str, LayerChoices]:
    """Each layer's bit choices in ``space`` (pinned layers: their one pinned value)."""
    fixed_a = (space.fixed_a_bits,)
    a_choices = tuple(space.a_choices) if space.search_activations else fixed_a
    choices = {}
    for index, name in enumerate(space.names):
        if index in space.searchable:
            choices[name] = LayerChoices(tuple(space.w_choices), a_choices)
        else:
            pin = int(space.pin_first_last)  # type: ignore[arg-type]
            choices[name] = LayerChoices((pin,), (pin,))
    return choices


def build_supernet(
    float_model: nn.Module, choices: dict[str, LayerChoices], spec: QuantizerSpec
) -> nn.Module:
    """A copy of ``float_model`` whose layers named in ``choices`` quantize their weights
    and input activations with switchable quantizers of ``spec``; at the highest bits."""
    model = copy.deepcopy(float_model)
    highest = Policy.from_bits(
        "supernet",
        "supernet",
        list(choices),
        [max(c.w) for c in choices.values()],
        [max(c.a) for c in choices.values()],
    )
    quantize_model(model, highest, spec)  # the quantized twins; their quantizers replaced
    for name, layer_choices in choices.items():
        layer = model.get_submodule(name)
        channels = layer.weight.shape[0]
        device = layer.weight.device
        layer.weight_quant = SwitchableQuantizer(
            spec.weight, "weight", layer_choices.w, channels
        ).to(device)
        layer.act_quant = SwitchableQuantizer(spec.activation, "activation", layer_choices.a).to(
            device
        )
    return model


def switchables(model: nn.Module) -> list[SwitchableQuantizer]:
    return [m for m in model.modules() if isinstance(m, SwitchableQuantizer)]


@torch.no_grad()
def calibrate_all_bits(model: nn.Module, images: Tensor) -> None:
    """Initialize every bitwidth's quantizer of every layer from one batch (eval mode):
    pass k sets each layer to its k-th choice (its last one when it has fewer)."""
    quantizers = switchables(model)
    saved = [q.bits for q in quantizers]
    for k in range(max(len(q.choices) for q in quantizers)):
        for q in quantizers:
            q.set_bits(q.choices[min(k, len(q.choices) - 1)])
        calibrate(model, images)
    for q, bits in zip(quantizers, saved, strict=True):
        q.set_bits(bits)


def score_policy(
    model: nn.Module,
    policy: Policy,
    bn_images: Batches,
    bn_batches: int,
    val: Batches,
    runtime: Runtime,
) -> float:
    """Validation accuracy (%) of the supernet at ``policy``: switch every layer to its bits,
    re-estimate batch-norm statistics on ``bn_batches`` batches, evaluate."""
    set_policy_bits(model, policy)
    if bn_batches > 0:
        device = next(model.parameters()).device
        reestimate_bn(model, (x.to(device) for x, _ in islice(iter(bn_images), bn_batches)))
    return evaluate(model, val, runtime).accuracy


def extract_policy_model(
    supernet: nn.Module, policy: Policy, spec: QuantizerSpec, float_model: nn.Module
) -> nn.Module:
    """A standalone quantized model of ``policy`` (``quantize_model`` of ``spec``) holding
    the supernet's weights and, per layer, the state (LSQ step) of the policy's bits: what
    ``qsearch finetune finetune.init=supernet`` starts from.

    Raises:
        UserError: the policy asks for bits the supernet was not trained for.
    """
    set_policy_bits(supernet, policy)
    model = quantize_model(copy.deepcopy(float_model), policy, spec).to(
        next(supernet.parameters()).device
    )
    shared = {
        key: value
        for key, value in supernet.state_dict().items()
        if ".weight_quant." not in key and ".act_quant." not in key
    }
    model.load_state_dict(shared, strict=False)  # the quantizers' state comes next
    for name, layer in quant_layers(model):
        twin = supernet.get_submodule(name)
        layer.weight_quant.load_state_dict(twin.weight_quant.active.state_dict())
        layer.act_quant.load_state_dict(twin.act_quant.active.state_dict())
    return model

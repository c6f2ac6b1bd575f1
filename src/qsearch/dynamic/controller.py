"""The bit controller (Liu et al., CVPR 2022, section 3.2) and its sampling rule.

The controller reads the features produced by the first (static) layers of the backbone,
average-pools them, and a 2-layer MLP outputs per sample and per dynamic layer the logits of
a categorical distribution over the K candidate bitwidths.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class BitController(nn.Module):
    """``features -> pool -> Linear -> ReLU -> Linear -> (N, layers, choices)`` logits.

    Args:
        in_shape: one sample's features, ``(C, H, W)`` (pooled to ``pool x pool``) or
            ``(F,)``.
        layers: number of dynamic layers L.
        choices: candidates per layer K.
        hidden: MLP hidden width.
        pool: side of the adaptive average pooling of conv features.
        prior: initial probability of each candidate ``(K,)``; None = uniform.

    The output layer's weights start at zero and its bias at ``log(prior)``, so every
    sample starts with the choice probabilities ``prior``.
    """

    def __init__(
        self,
        in_shape: tuple[int, ...],
        layers: int,
        choices: int,
        hidden: int,
        pool: int,
        prior: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.layers, self.choices = layers, choices
        if len(in_shape) == 3:
            self.pool: nn.Module = nn.AdaptiveAvgPool2d(pool)
            features = in_shape[0] * pool * pool
        else:
            self.pool = nn.Identity()
            features = in_shape[-1]
        self.mlp = nn.Sequential(
            nn.Flatten(),
            nn.BatchNorm1d(features),  # standardized features: per-sample differences count
            nn.Linear(features, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, layers * choices),
        )
        head = self.mlp[-1]
        assert isinstance(head, nn.Linear)
        nn.init.zeros_(head.weight)
        with torch.no_grad():
            logits = torch.zeros(choices) if prior is None else torch.tensor(prior).log()
            head.bias.copy_(logits.repeat(layers))

    def forward(self, features: Tensor) -> Tensor:
        """Logits ``(N, layers, choices)`` in fp32."""
        logits = self.mlp(self.pool(features)).float()
        return logits.view(-1, self.layers, self.choices)

    def macs(self) -> int:
        """Multiply-accumulates of the MLP for one sample (the pooling not counted)."""
        return sum(m.weight.numel() for m in self.mlp if isinstance(m, nn.Linear))


def choose(logits: Tensor, tau: float, training: bool) -> Tensor:
    """One-hot choices ``(N, L, K)`` from logits ``(N, L, K)``.

    Training: a hard Gumbel-Softmax sample (Jang et al., ICLR 2017, eq. 2, with the
    straight-through estimator of section 2.2): one-hot forward, the gradient of the soft
    sample at temperature ``tau`` backward. Inference: the one-hot of the argmax, so a
    sample's bits are deterministic.
    """
    if training:
        return F.gumbel_softmax(logits, tau=tau, hard=True, dim=-1)
    return F.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)

"""Non-uniform k-means weight quantization (Han et al., "Deep Compression", ICLR 2016).

HAQ's model-size mode (Wang et al., CVPR 2019, sec. 3.3): the weights of a layer share
``2^b`` values, the centroids of a 1-d k-means with k-means++ initialization (Deep
Compression sec. 3). Each weight is replaced by its nearest centroid, ``W_q =
centroids[labels]``; the labels are fixed at initialization and fine-tuning trains the
centroids, whose gradient is the sum of the gradients of their weights (Deep Compression
eq. 3). The float weights get no gradient: the layer *is* its codebook and labels.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from qsearch.quant._clip import subsample
from qsearch.quant.base import Quantizer, Role

KMEANS_SAMPLES = 50_000


def kmeans_centroids(x: Tensor, k: int, seed: int = 0) -> Tensor:
    """``k`` sorted 1-d k-means centroids of ``x`` (k-means++ init; at most 50k samples).

    With ``k`` or fewer distinct values, the centroids are those values (the largest
    repeated to fill ``k``).
    """
    sample = subsample(x, KMEANS_SAMPLES).float().cpu()
    distinct = sample.unique()
    if distinct.numel() <= k:
        return torch.cat([distinct, distinct[-1:].expand(k - distinct.numel())])
    from sklearn.cluster import KMeans

    fit = KMeans(n_clusters=k, init="k-means++", n_init=1, random_state=seed)
    fit.fit(sample.double().numpy().reshape(-1, 1))
    return torch.from_numpy(fit.cluster_centers_.ravel()).float().sort().values


def nearest(x: Tensor, sorted_centroids: Tensor) -> Tensor:
    """The index of the nearest of ``sorted_centroids`` for every element of ``x``."""
    midpoints = (sorted_centroids[1:] + sorted_centroids[:-1]) / 2
    return torch.bucketize(x.contiguous(), midpoints.contiguous())


class KmeansQuantizer(Quantizer):
    """k-means weight sharing: ``2^b`` learned centroids per layer, fixed assignments.

    ``centroids`` (a parameter of shape ``(2^b,)``) exists from construction so a state
    dict loads into a quantizer built with the same bits; ``labels`` (int64, the weight's
    shape) is filled at initialization or by loading. :meth:`codebook` returns both.

    Args:
        bits: 1..8, or 32 (float).
        role: ``"weight"`` only.
        seed: random state of the k-means++ initialization.
    """

    name = "kmeans"
    min_bits = 1
    roles: ClassVar[frozenset[str]] = frozenset({"weight"})
    zero_exact: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self, bits: int, role: Role, signed: bool | None = None, channels: int = 1, seed: int = 0
    ) -> None:
        super().__init__(bits, role, signed, channels)
        self.seed = seed
        self.centroids = nn.Parameter(torch.zeros(self._k()))
        self.register_buffer("labels", torch.zeros(0, dtype=torch.int64))

    def _k(self) -> int:
        return 2**self.bits if self.enabled else 0

    def set_bits(self, bits: int) -> None:
        """Change the bitwidth: a new centroid parameter (re-add it to any optimizer)."""
        super().set_bits(bits)
        device = self.centroids.device
        self.centroids = nn.Parameter(torch.zeros(self._k(), device=device))
        self.labels = torch.zeros(0, dtype=torch.int64, device=device)

    def initialize(self, x: Tensor) -> None:
        """Cluster the weights ``x``: centroids by k-means, labels by nearest centroid."""
        centroids = kmeans_centroids(x, self._k(), self.seed).to(x.device)
        self.centroids.data.copy_(centroids)
        self.labels = nearest(x, centroids)

    def quantize(self, x: Tensor) -> Tensor:
        if self.labels.shape != x.shape:
            raise ValueError(
                f"k-means quantizer clustered a tensor of shape {tuple(self.labels.shape)}, "
                f"got {tuple(x.shape)}"
            )
        return self.centroids[self.labels]

    def codebook(self) -> tuple[Tensor, Tensor] | None:
        if not self.enabled or not bool(self.initialized):
            return None
        return self.centroids.detach(), self.labels

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        labels = state_dict.get(prefix + "labels")
        if labels is not None:  # the labels' shape is the weight's, unknown until now
            self.labels = torch.zeros_like(labels, device=self.labels.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

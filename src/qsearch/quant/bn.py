"""Batch-norm statistics re-estimation for a quantized model.

Quantizing a network shifts the distribution of every pre-BN activation, so the running
means and variances learned in float no longer match; re-estimating them on a few training
batches, with no gradient step, recovers much of the accuracy a quantized model loses
before any retraining. This is the BN calibration that one-shot and supernet evaluators
use before scoring a sub-network (e.g. Guo et al., "Single Path One-Shot NAS", ECCV 2020;
Yu et al., "BigNAS", ECCV 2020).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The model's batch-norm layers that track running statistics."""
    return [
        module
        for module in model.modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats
    ]


@torch.no_grad()
def reestimate_bn(model: nn.Module, batches: Iterable[Tensor]) -> int:
    """Replace every batch norm's running mean and variance by their exact average over
    ``batches`` (inputs only), leaving every parameter and every other buffer as it was.

    Only the batch norms run in training mode (quantizers and dropout stay in eval mode),
    with ``momentum=None``, PyTorch's cumulative moving average, so the result is the
    mean over batches whatever their number. Returns the number of batches used.
    """
    norms = batch_norms(model)
    if not norms:
        return 0
    was_training = model.training
    momenta = [bn.momentum for bn in norms]
    model.eval()
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    used = 0
    try:
        for images in batches:
            model(images)
            used += 1
    finally:
        for bn, momentum in zip(norms, momenta, strict=True):
            bn.momentum = momentum
        model.train(was_training)
    return used

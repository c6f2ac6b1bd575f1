"""Batch-norm re-estimation: only running statistics change, and to the exact batch mean."""

from __future__ import annotations

import torch
from torch import nn

from qsearch.config import job_config
from qsearch.models.inventory import layer_inventory
from qsearch.models.resnet_cifar import resnet20
from qsearch.quant.bn import reestimate_bn
from qsearch.quant.layers import QuantizerSpec, calibrate, quantize_model
from qsearch.quant.policy import Policy


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5))


def test_running_stats_become_the_average_over_batches() -> None:
    net = _net()
    batches = [torch.randn(8, 1, 6, 6) * (i + 1) + i for i in range(3)]
    assert reestimate_bn(net, batches) == 3
    conv, bn = net[0], net[1]
    with torch.no_grad():
        outs = [conv(b) for b in batches]
    means = torch.stack([o.mean(dim=(0, 2, 3)) for o in outs])
    variances = torch.stack([o.var(dim=(0, 2, 3), unbiased=True) for o in outs])
    assert torch.allclose(bn.running_mean, means.mean(0), atol=1e-5)
    assert torch.allclose(bn.running_var, variances.mean(0), atol=1e-4)
    assert bn.momentum == 0.1 and int(bn.num_batches_tracked) == 3


def test_only_running_statistics_of_a_quantized_model_change() -> None:
    torch.manual_seed(0)
    model = resnet20()
    names = [layer.name for layer in layer_inventory(model, (3, 32, 32))]
    policy = Policy.uniform("resnet20", "cifar10", names, 3, 3, pin_first_last=8)
    spec = QuantizerSpec.from_config(job_config("finetune", ["quantizer=lsq"]).quantizer)
    model = quantize_model(model, policy, spec)
    calibrate(model, torch.randn(8, 3, 32, 32))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reestimate_bn(model, [torch.randn(4, 3, 32, 32) for _ in range(2)])
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    stats = ("running_mean", "running_var", "num_batches_tracked")
    assert changed and all(k.endswith(stats) for k in changed)
    assert model.training  # the mode is restored
    assert all(p.grad is None for p in model.parameters())

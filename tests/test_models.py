"""Every model in conf/model/ builds, runs forward+backward, and has a correct inventory."""

from __future__ import annotations

import pytest
import torch

from qsearch.config import group_options
from qsearch.data.tensors import DatasetInfo
from qsearch.models import build_model, model_inventory
from qsearch.models.inventory import layer_inventory
from qsearch.models.lenet import LeNet5
from qsearch.models.mobilenet import MobileNetV2
from qsearch.models.resnet_cifar import resnet20
from tests.conftest import compose

GREY_28 = DatasetInfo("mnist", 10, 1, 28, (0.1,), (0.3,))
RGB_32 = DatasetInfo("cifar10", 10, 3, 32, (0.5,) * 3, (0.25,) * 3)
GREY_8 = DatasetInfo("digits", 10, 1, 8, (0.3,), (0.4,))


def _info_for(model_name: str) -> DatasetInfo:
    return GREY_28 if model_name.startswith("lenet") else RGB_32


@pytest.mark.parametrize("name", group_options("model"))
def test_every_model_trains_one_step(name: str) -> None:
    cfg = compose("train", f"model={name}")
    info = _info_for(name)
    torch.manual_seed(0)
    model = build_model(cfg.model, info)
    images = torch.randn(2, info.in_channels, info.image_size, info.image_size)
    logits = model(images)
    assert logits.shape == (2, info.num_classes)
    logits.logsumexp(1).sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    inventory = model_inventory(model, info)
    assert [layer.index for layer in inventory] == list(range(len(inventory)))
    assert inventory[-1].kind == "linear" and inventory[-1].out_channels == info.num_classes


@pytest.mark.parametrize("name", ["lenet5", "lenet_caffe"])
def test_lenets_work_on_8x8_digits(name: str) -> None:
    model = build_model(compose("train", f"model={name}").model, GREY_8)
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)


def test_lenet5_inventory_matches_hand_count() -> None:
    inventory = layer_inventory(LeNet5(), (1, 28, 28))
    # conv1 pad 2: 28x28 out, 6x1x5x5 weights; conv2: 10x10 out, 16x6x5x5; fc 400-120-84-10
    expected_macs = [28 * 28 * 6 * 25, 10 * 10 * 16 * 6 * 25, 400 * 120, 120 * 84, 84 * 10]
    assert [layer.macs for layer in inventory] == expected_macs
    assert sum(expected_macs) == 416_520
    assert [layer.weight_params for layer in inventory] == [150, 2400, 48000, 10080, 840]
    assert [layer.bias_params for layer in inventory] == [6, 16, 120, 84, 10]
    assert [layer.input_size for layer in inventory[:2]] == [(28, 28), (14, 14)]
    assert inventory[1].output_size == (10, 10)
    assert [layer.kind for layer in inventory] == ["conv"] * 2 + ["linear"] * 3
    assert [layer.name for layer in inventory] == [
        "features.0",
        "features.3",
        "classifier.1",
        "classifier.3",
        "classifier.5",
    ]


def test_resnet20_has_published_size() -> None:
    model = resnet20()
    inventory = layer_inventory(model, (3, 32, 32))
    assert len(inventory) == 20  # 19 convs + fc: "ResNet-20"
    assert sum(p.numel() for p in model.parameters()) == 269_722  # "0.27 M"
    # stem 32*32*16*27; 6 convs at 32x32x16x16x9; stage 2 and 3: 1 down-sampling + 5 convs
    stage = 16 * 16 * 32 * 16 * 9 + 5 * 16 * 16 * 32 * 32 * 9
    expected = 32 * 32 * 16 * 27 + 6 * 32 * 32 * 16 * 16 * 9 + 2 * stage + 64 * 10
    assert sum(layer.macs for layer in inventory) == expected == 40_551_040  # "~41 M"
    strides = [layer.stride for layer in inventory if layer.kind == "conv"]
    assert strides.count(2) == 2


def test_depthwise_layers_are_flagged() -> None:
    inventory = layer_inventory(MobileNetV2(), (3, 32, 32))
    depthwise = [layer for layer in inventory if layer.is_depthwise]
    assert len(depthwise) == 17
    assert all(layer.weight_params == layer.out_channels * 9 for layer in depthwise)


def test_inventory_leaves_model_state_alone() -> None:
    model = resnet20()
    model.train()
    before = model.bn1.running_mean.clone()
    layer_inventory(model, (3, 32, 32))
    assert model.training
    assert torch.equal(model.bn1.running_mean, before)
    assert not any(module._forward_hooks for module in model.modules())

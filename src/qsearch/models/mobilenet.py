"""MobileNet V1 (Howard et al., 2017) and V2 (Sandler et al., CVPR 2018) for 32x32 inputs.

As usual for CIFAR, the stem keeps stride 1 (and V2's second stage too) so that a 32x32
image is not reduced to 1x1 before the last stage.
"""

from __future__ import annotations

from torch import Tensor, nn


def _conv_bn_relu(
    c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, relu6: bool = False
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU6(inplace=True) if relu6 else nn.ReLU(inplace=True),
    )


class MobileNetV1(nn.Module):
    """Depthwise-separable stack: 27 convs (13 depthwise, 14 dense) and one fc."""

    # (out_channels, stride) of each depthwise-separable block
    BLOCKS = (
        (64, 1),
        (128, 2),
        (128, 1),
        (256, 2),
        (256, 1),
        (512, 2),
        (512, 1),
        (512, 1),
        (512, 1),
        (512, 1),
        (512, 1),
        (1024, 2),
        (1024, 1),
    )

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        c_in = int(32 * width)
        layers = [_conv_bn_relu(in_channels, c_in, 3)]
        for c_out, stride in self.BLOCKS:
            c_out = int(c_out * width)
            layers += [
                _conv_bn_relu(c_in, c_in, 3, stride, groups=c_in),
                _conv_bn_relu(c_in, c_out, 1),
            ]
            c_in = c_out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))


class InvertedResidual(nn.Module):
    """Expand (1x1) - depthwise (3x3) - project (1x1, linear), residual when shapes match."""

    def __init__(self, c_in: int, c_out: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = c_in * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(_conv_bn_relu(c_in, hidden, 1, relu6=True))
        layers += [
            _conv_bn_relu(hidden, hidden, 3, stride, groups=hidden, relu6=True),
            nn.Conv2d(hidden, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return x + out if self.residual else out


class MobileNetV2(nn.Module):
    """Inverted residual stack (17 blocks), a 1x1 conv to 1280 channels and one fc."""

    # (expansion, out_channels, repeats, stride); stride 1 in stage 2 for 32x32 inputs
    STAGES = (
        (1, 16, 1, 1),
        (6, 24, 2, 1),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        c_in = int(32 * width)
        layers: list[nn.Module] = [_conv_bn_relu(in_channels, c_in, 3, relu6=True)]
        for expansion, c_out, repeats, stride in self.STAGES:
            c_out = int(c_out * width)
            for i in range(repeats):
                layers.append(InvertedResidual(c_in, c_out, stride if i == 0 else 1, expansion))
                c_in = c_out
        last = max(1280, int(1280 * width))
        layers += [_conv_bn_relu(c_in, last, 1, relu6=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(last, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))

"""A 5-layer CIFAR network (4 convs + 1 fc), the size of ReLeQ's "SimpleNet" row."""

from __future__ import annotations

from torch import Tensor, nn


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


class SimpleNet(nn.Module):
    """conv 32 - conv 64 - pool - conv 128 - pool - conv 128 - pool - global pool - fc."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn(in_channels, 32),
            *_conv_bn(32, 64),
            nn.MaxPool2d(2),
            *_conv_bn(64, 128),
            nn.MaxPool2d(2),
            *_conv_bn(128, 128),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))

"""VGG (Simonyan & Zisserman, 2015) for CIFAR: 3x3 conv-BN-ReLU stacks and one fc layer."""

from __future__ import annotations

from torch import Tensor, nn

_CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        "M",
    ],
}


class CifarVGG(nn.Module):
    """The convolutional part of VGG-11/16 with batch norm, then global pooling and one fc."""

    def __init__(self, config: str, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for item in _CONFIGS[config]:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [
                    nn.Conv2d(c_in, int(item), 3, padding=1, bias=False),
                    nn.BatchNorm2d(int(item)),
                    nn.ReLU(inplace=True),
                ]
                c_in = int(item)
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def vgg11(num_classes: int = 10, in_channels: int = 3) -> CifarVGG:
    """VGG-11 (8 convs + 1 fc) for 32x32 inputs."""
    return CifarVGG("vgg11", num_classes, in_channels)


def vgg16(num_classes: int = 10, in_channels: int = 3) -> CifarVGG:
    """VGG-16 (13 convs + 1 fc) for 32x32 inputs."""
    return CifarVGG("vgg16", num_classes, in_channels)

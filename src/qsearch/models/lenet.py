"""LeNet-5 (LeCun et al., 1998) with ReLU and max pooling, sized for 28x28 and 8x8 inputs."""

from __future__ import annotations

from torch import Tensor, nn


def _conv_pool_pair(
    in_channels: int, first: int, second: int, padding: tuple[int, int]
) -> nn.Sequential:
    """conv(first, 5x5) - ReLU - pool 2 - conv(second, 5x5) - ReLU - pool 2."""
    return nn.Sequential(
        nn.Conv2d(in_channels, first, 5, padding=padding[0]),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(first, second, 5, padding=padding[1]),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class LeNet5(nn.Module):
    """conv(6, 5x5) - pool - conv(16, 5x5) - pool - fc 120 - fc 84 - fc classes.

    The first conv is padded to keep the input size (as in the classic 28x28 MNIST
    variant). On inputs smaller than 16 px (scikit-learn's 8x8 digits) the second conv is
    padded too, so that a 2x2 map survives the second pooling.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> None:
        super().__init__()
        pad2 = 2 if image_size < 16 else 0
        side = ((image_size // 2) + 2 * pad2 - 4) // 2
        if side < 1:
            raise ValueError(f"LeNet5 needs inputs of at least 8x8 pixels, got {image_size}")
        self.features = _conv_pool_pair(in_channels, 6, 16, (2, pad2))
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * side * side, 120),
            nn.ReLU(inplace=True),
            nn.Linear(120, 84),
            nn.ReLU(inplace=True),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class LeNetCaffe(nn.Module):
    """Caffe's 4-layer LeNet: conv(20, 5x5) - pool - conv(50, 5x5) - pool - fc 500 - fc classes.

    The LeNet of ReLeQ's MNIST result (four quantizable layers, bits {2, 2, 3, 2}).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> None:
        super().__init__()
        pad = 2 if image_size < 16 else 0
        side = ((image_size + 2 * pad - 4) // 2 + 2 * pad - 4) // 2
        if side < 1:
            raise ValueError(f"LeNetCaffe needs inputs of at least 8x8 pixels, got {image_size}")
        self.features = _conv_pool_pair(in_channels, 20, 50, (pad, pad))
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(50 * side * side, 500),
            nn.ReLU(inplace=True),
            nn.Linear(500, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))

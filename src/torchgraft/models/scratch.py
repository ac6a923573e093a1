"""From-scratch networks for MNIST-sized inputs, with timm's model contract.

Like timm models they offer `forward_features`, `forward_head(x, pre_logits=...)` and
`get_classifier()` (the cnn also `forward_intermediates`), so training, feature caching,
Grad-CAM and the unfamiliar-input embedding treat them the same way.
"""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """Flatten the image, two hidden layers with ReLU and dropout, then a linear classifier."""

    def __init__(self, num_classes: int, in_chans: int, image_size: int, hidden: int = 512) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_chans * image_size * image_size, hidden),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(hidden, hidden // 2),
            nn.ReLU(),
            nn.Dropout(0.2),
        )
        self.classifier = nn.Linear(hidden // 2, num_classes)
        self.num_features = hidden // 2

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.classifier(x)

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """Three conv blocks (32, 64, 128 channels) with max-pooling, global pooling, a classifier.

    The last block is left unpooled so Grad-CAM has a spatial map to look at.
    """

    def __init__(self, num_classes: int, in_chans: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            _conv_block(in_chans, 32), nn.MaxPool2d(2), _conv_block(32, 64), nn.MaxPool2d(2)
        )
        self.conv_head = _conv_block(64, 128)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2))
        self.classifier = nn.Linear(128, num_classes)
        self.num_features = 128
        # timm's description of the stages (forward_intermediates): the three blocks.
        self.feature_info = [
            {"num_chs": 32, "reduction": 1, "module": "stem.0"},
            {"num_chs": 64, "reduction": 2, "module": "stem.2"},
            {"num_chs": 128, "reduction": 4, "module": "conv_head"},
        ]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_head(self.stem(x))

    def forward_intermediates(
        self, x: torch.Tensor, indices: int | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(final features, the outputs of the last `indices` blocks, all if None), as
        timm's nets give them."""
        first = self.stem[0](x)
        second = self.stem[2](self.stem[1](first))
        final = self.conv_head(self.stem[3](second))
        stages = [first, second, final]
        return final, stages[-(indices or len(stages)) :]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pool(x)
        return x if pre_logits else self.classifier(x)

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

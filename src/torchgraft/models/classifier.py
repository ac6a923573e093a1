"""The grafted classifier: a backbone, a new head, and the input normalisation in one module.

`GraftedClassifier` takes uint8 images (N, C, H, W) and returns logits. Keeping the
normalisation inside means training, prediction and every export agree on it by construction.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from torchgraft.artifact import Run
from torchgraft.models.registry import BackboneSpec, get_spec
from torchgraft.models.scratch import MLP, SmallCNN
from torchgraft.models.weights import load_backbone_weights, pretrained_weights


class GraftedClassifier(nn.Module):
    """uint8 images in, logits out. `net` follows timm's contract (forward_features, ...)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.net: Any = net  # a timm model or one of torchgraft's from-scratch nets
        # Scaled by 255 so that (pixels - mean) / std works directly on 0..255 values.
        # Not persistent: the run's graft.json is the one source of truth for them.
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1) * 255, persistent=False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(images))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled features just before the classifier: what the frozen phase trains on."""
        spatial = self.net.forward_features(self.normalize(images))
        return self.net.forward_head(spatial, pre_logits=True)

    @property
    def head(self) -> nn.Module:
        return self.net.get_classifier()

    def backbone_parameters(self) -> list[nn.Parameter]:
        head_ids = {id(p) for p in self.head.parameters()}
        return [p for p in self.parameters() if id(p) not in head_ids]

    def set_backbone_trainable(self, trainable: bool) -> None:
        for parameter in self.backbone_parameters():
            parameter.requires_grad_(trainable)


def create_classifier(
    model_name: str,
    num_classes: int,
    *,
    channels: int,
    image_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    pretrained: bool = False,
    weights_path: str | None = None,
) -> GraftedClassifier:
    """Build the network for `model_name`; with `pretrained`, load backbone weights too."""
    spec = get_spec(model_name)
    net = _create_net(spec, num_classes, channels, image_size)
    if pretrained and spec.pretrainable:
        weights, origin = pretrained_weights(spec, weights_path)
        load_backbone_weights(net, weights, origin)
        reset_head(net.get_classifier())  # type: ignore[operator]
    return GraftedClassifier(net, mean, std)


def reset_head(head: nn.Module) -> None:
    """Start a grafted head near zero, so its first logits are near uniform.

    timm's EfficientNet initialiser scales a linear layer by 1/sqrt(fan_out); with 10 classes
    that gives logits of size ~6 on pretrained features and a first epoch spent undoing it.
    """
    for module in head.modules():
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.01)
            nn.init.zeros_(module.bias)


def _create_net(spec: BackboneSpec, num_classes: int, channels: int, image_size: int) -> nn.Module:
    if spec.name == "mlp":
        return MLP(num_classes, channels, image_size)
    if spec.name == "cnn":
        return SmallCNN(num_classes, channels)
    import timm

    net: nn.Module = timm.create_model(
        spec.name, pretrained=False, num_classes=num_classes, in_chans=channels
    )
    return net


def load_model(run: Run) -> GraftedClassifier:
    """The run's network with its trained weights (no pretrained download, no training code)."""
    info, prep = run.info, run.info.preprocessing
    model = create_classifier(
        info.model_name,
        info.num_classes,
        channels=prep.channels,
        image_size=prep.image_size,
        mean=prep.mean,
        std=prep.std,
        pretrained=False,
    )
    model.load_state_dict(run.load_weights())
    return model

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


class _Float32Input:
    """Mixed into the stem convolution: it runs in float32 inside an autocast region.

    Measured on the demo model (99.3% on 1,000 mnist5k validation digits in float32): under
    bf16 autocast it scored 98.6%, with a largest logit change of 1.55; with the stem in
    float32, 99.2% and 0.40. Rounding only the stem's input to bf16 (its 8-bit mantissa
    moves a normalised pixel by up to half a grey level) was enough to lose 0.8 points:
    the stem's BatchNorm multiplies one of its channels by 540 in that model. Rounding the
    stem's weights or its output cost 0.1 points or nothing.
    """

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(inputs.device.type):
            with torch.autocast(inputs.device.type, enabled=False):
                return super().forward(inputs.float())  # type: ignore[misc]
        return super().forward(inputs)  # type: ignore[misc]


def first_convolution(net: nn.Module) -> nn.Conv2d | None:
    """The stem: the first convolution registered (timm nets register the stem first)."""
    return next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)


def keep_input_in_float32(convolution: nn.Conv2d) -> None:
    """Make `convolution` compute in float32 under autocast. Its class is swapped for a
    subclass, not wrapped, so parameter names (and every saved run) stay as they are."""
    base = type(convolution)
    if not issubclass(base, _Float32Input):
        if base not in _FLOAT32_CLASSES:
            _FLOAT32_CLASSES[base] = type(f"Float32Input{base.__name__}", (_Float32Input, base), {})
        convolution.__class__ = _FLOAT32_CLASSES[base]


_FLOAT32_CLASSES: dict[type, type] = {}  # one subclass per convolution class

# The embedding's stages, at most (the last ones): all of a CNN's (four or five), the last
# five blocks of a ViT (twelve or more, each as wide as the last).
EMBEDDING_STAGES = 5


def stage_statistics(stages: list[torch.Tensor]) -> torch.Tensor:
    """(N, D) float32: each (N, C, H, W) stage's channel means and standard deviations over
    the image, scaled to unit length per stage (each stage weighs the same in a cosine),
    side by side. Means say what a stage found; deviations how its texture varies, where
    photos and digits differ most in the early stages."""
    parts = []
    for stage in stages:
        deviations, means = torch.std_mean(stage.float(), dim=(2, 3), correction=0)
        parts.append(nn.functional.normalize(torch.cat([means, deviations], dim=1), dim=1))
    return torch.cat(parts, dim=1)


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
        stem = first_convolution(net)
        if stem is not None:
            keep_input_in_float32(stem)
        # Whether the head of the final features is the forward (embedding_and_logits);
        # None: not known yet.
        self._one_pass: bool | None = None

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(images))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled features just before the classifier: what the frozen phase trains on."""
        spatial = self.net.forward_features(self.normalize(images))
        return self.net.forward_head(spatial, pre_logits=True)

    def embedding_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, D) embedding and (N, num_classes) logits from one pass through the net: the
        embedding is what scores how unlike the training images an input is
        (evaluate.familiar). Call in eval mode (dropout would change the logits).

        The embedding is `stage_statistics` of the net's last EMBEDDING_STAGES stages
        (timm's forward_intermediates: every stage of a CNN); a net without stages (the
        mlp) gives its pre-logit features. Why not the pre-logit features for all: trained
        to gather each class in one place, on the demo model they put a photo of a rocket (a
        bright bar on a dark sky) among the 1s, at the median distance of the validation
        digits, where the stages flag all 20 of scikit-image's photos.

        The logits are forward_head of the pass's final features, which is the forward of
        timm's nets and torchgraft's own (a test checks seven kinds); a net for which it is
        not is found on the first call, by comparing with the forward, and from then on runs
        the forward as a second pass.
        """
        inputs = self.normalize(images)
        if hasattr(self.net, "forward_intermediates"):
            count = min(EMBEDDING_STAGES, len(self.net.feature_info))
            final, stages = self.net.forward_intermediates(inputs, indices=count)
            embedding = stage_statistics(stages)
        else:
            final = self.net.forward_features(inputs)
            embedding = self.net.forward_head(final, pre_logits=True).float()
        logits = self.net.forward_head(final)
        if self._one_pass is None:
            forward = self.net(inputs).float()
            self._one_pass = bool(torch.allclose(logits.float(), forward, rtol=1e-3, atol=1e-3))
        if not self._one_pass:
            logits = self.net(inputs)
        return embedding, logits

    @property
    def head(self) -> nn.Module:
        return self.net.get_classifier()

    def backbone_parameters(self) -> list[nn.Parameter]:
        head_ids = {id(p) for p in self.head.parameters()}
        return [p for p in self.parameters() if id(p) not in head_ids]

    def set_backbone_trainable(self, trainable: bool, *, depthwise: bool = True) -> None:
        """Let the backbone learn (or not); `depthwise` False keeps depthwise filters fixed.

        On a CPU the weight gradient of a depthwise convolution is the slowest op of a
        MobileNet-style step (measured on EfficientNet-Lite0 at 64 px: 2.4x faster steps
        without it), while those filters are 5% of the weights.
        """
        for parameter in self.backbone_parameters():
            parameter.requires_grad_(trainable)
        if trainable and not depthwise:
            for module in self.net.modules():
                if isinstance(module, nn.Conv2d) and module.groups > 1:
                    module.weight.requires_grad_(False)

    def keep_normalization_statistics(self) -> None:
        """Put every BatchNorm in eval mode: it normalises with its running statistics.

        Called after `train()` while fine-tuning a backbone whose head learned on features
        computed with those statistics: batch statistics would change every feature the
        head was trained on at the first step (the cause of the accuracy collapse at the
        hand-off from the frozen phase). The affine weights still learn.
        """
        for module in self.net.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()

    def param_groups(
        self, lr: float, *, weight_decay: float, backbone_lr_divisor: float = 1.0,
        layer_decay: float | None = None, head_only: bool = False,
    ) -> list[dict[str, Any]]:  # fmt: skip
        """Optimizer groups for the trainable parameters: the one place training and the lr
        finder get them from.

        The head learns at `lr`; the backbone at `lr / backbone_lr_divisor`, or, with
        `layer_decay`, at lr * layer_decay ** (blocks between it and the head) (timm's
        grouping). Norm weights and biases get no weight decay. Frozen parameters are left
        out. Each group carries `name` for logs and tests.
        """
        if layer_decay is not None and not head_only:
            return _layer_decay_groups(self.net, lr, weight_decay, layer_decay)
        head_ids = {id(p) for p in self.head.parameters()}
        parts = [("head", lr, True)]
        if not head_only:
            parts.insert(0, ("backbone", lr / backbone_lr_divisor, False))
        groups = []
        for part, part_lr, in_head in parts:
            chosen = [
                (name, p) for name, p in self.net.named_parameters()
                if p.requires_grad and (id(p) in head_ids) == in_head
            ]  # fmt: skip
            for decays, suffix in ((True, ""), (False, " no decay")):
                params = [p for name, p in chosen if _decays(name, p) == decays]
                if params:
                    groups.append({
                        "name": part + suffix, "params": params, "lr": part_lr,
                        "weight_decay": weight_decay if decays else 0.0,
                    })  # fmt: skip
        return groups


def _decays(name: str, parameter: nn.Parameter) -> bool:
    """Weight decay shrinks weight matrices and filters, never norms or biases."""
    return parameter.ndim > 1 and not name.endswith(".bias")


def _layer_decay_groups(
    net: nn.Module, lr: float, weight_decay: float, layer_decay: float
) -> list[dict[str, Any]]:
    from timm.optim._param_groups import param_groups_layer_decay

    groups = param_groups_layer_decay(net, weight_decay=weight_decay, layer_decay=layer_decay)
    for index, group in enumerate(groups):
        group["lr"] = lr * group.pop("lr_scale", 1.0)
        group["name"] = f"layer group {index}"
        group.pop("param_names", None)
    return groups


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

"""The optimizer settings of a run and the parameter groups built from them.

Training and the learning-rate finder both build their groups here, so the rates the finder
sweeps are the ones training uses (layer decay included).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torchgraft.models import GraftedClassifier


@dataclass(frozen=True)
class OptimizerSettings:
    """How fast each part of the network learns (resolved: no None, no "auto")."""

    lr: float  # peak learning rate of the head while fine-tuning
    head_lr: float  # peak learning rate of the head alone on cached features
    weight_decay: float  # AdamW decoupled weight decay (never on norms or biases)
    backbone_lr_divisor: float  # the backbone learns at lr / this
    layer_decay: float | None  # layer-wise decay instead of the divisor, e.g. 0.75


def head_groups(model: GraftedClassifier, settings: OptimizerSettings) -> list[dict[str, Any]]:
    """The head alone (the frozen phase), at `head_lr`."""
    return model.param_groups(settings.head_lr, weight_decay=settings.weight_decay, head_only=True)


def fine_tune_groups(
    model: GraftedClassifier, settings: OptimizerSettings, lr: float | None = None
) -> list[dict[str, Any]]:
    """Every trainable parameter, the head at `lr` (default: the settings') and the backbone
    slower; call after the backbone has been made trainable."""
    return model.param_groups(
        settings.lr if lr is None else lr, weight_decay=settings.weight_decay,
        backbone_lr_divisor=settings.backbone_lr_divisor, layer_decay=settings.layer_decay,
    )  # fmt: skip

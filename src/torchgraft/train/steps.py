"""How each optimizer step is taken in whole-network phases: the loss, the precision, the
optional MixUp/CutMix, all settled from the run's config into `loop.StepOptions`."""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from torchgraft.config import RunConfig
from torchgraft.precision import gradient_scaler, precision_for
from torchgraft.train.loop import StepOptions


def step_options(
    config: RunConfig, train_labels: np.ndarray, num_classes: int, device: torch.device
) -> StepOptions:
    """Loss, precision and the optional step features of the fine-tune phase."""
    train = config.train
    precision = precision_for(train.precision, device)
    weight = (
        class_weights(train_labels, num_classes).to(device)
        if train.class_weights == "auto"
        else None
    )
    loss = functools.partial(
        F.cross_entropy, weight=weight, label_smoothing=train.label_smoothing or 0.0
    )
    return StepOptions(
        loss=loss,
        precision=precision,
        scaler=gradient_scaler(precision, device),
        channels_last=train.channels_last,
        accumulate=train.accumulate,
        grad_clip=train.grad_clip,
        batch_transform=mix_transform(train.mixup, train.cutmix, num_classes),
    )


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse class frequency, scaled to mean 1 (absent classes get weight 0)."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = np.divide(
        counts.sum() / num_classes, counts, out=np.zeros_like(counts), where=counts > 0
    )
    return torch.tensor(weights / weights[weights > 0].mean(), dtype=torch.float32)


def mix_transform(
    mixup: float, cutmix: float, num_classes: int
) -> functools.partial[tuple[torch.Tensor, torch.Tensor]] | None:
    """MixUp and/or CutMix on float batches (one of them per batch when both are on)."""
    from torchvision.transforms import v2

    chosen = [v2.MixUp(alpha=mixup, num_classes=num_classes)] if mixup > 0 else []
    chosen += [v2.CutMix(alpha=cutmix, num_classes=num_classes)] if cutmix > 0 else []
    if not chosen:
        return None
    mixer = chosen[0] if len(chosen) == 1 else v2.RandomChoice(chosen)
    return functools.partial(_mix, mixer)


def _mix(
    mixer: object, images: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    return mixer(images.float(), labels)  # type: ignore[operator]

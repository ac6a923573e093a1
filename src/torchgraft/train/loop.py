"""The training loop, written to be read top to bottom.

`train_one_epoch` and `evaluate` work on any module and any loader of (inputs, labels): the
whole network on images, or only the head on cached features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader
from tqdm.auto import tqdm


@dataclass
class EpochResult:
    loss: float  # mean cross-entropy over the epoch's examples
    accuracy: float  # share of examples whose top-1 prediction is right


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader[Any],
    optimizer: Optimizer,
    scheduler: LRScheduler,
    device: torch.device,
    *,
    description: str = "train",
    quiet: bool = False,
) -> EpochResult:
    """One pass over `loader`: forward, loss, backward, step; the schedule steps per batch."""
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    with tqdm(loader, desc=description, disable=quiet, leave=False, unit="batch") as progress:
        for inputs, labels in progress:
            inputs, labels = inputs.to(device, non_blocking=True), labels.to(device)
            logits = model(inputs)
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * len(labels)
            correct += (logits.argmax(1) == labels).sum().item()
            seen += len(labels)
            progress.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}")
    return EpochResult(total_loss / max(seen, 1), correct / max(seen, 1))


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader[Any],
    device: torch.device,
    *,
    description: str = "validate",
    quiet: bool = False,
) -> EpochResult:
    """Mean loss and accuracy of `model` on `loader`, in eval mode, without gradients."""
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    for inputs, labels in tqdm(loader, desc=description, disable=quiet, leave=False):
        inputs, labels = inputs.to(device, non_blocking=True), labels.to(device)
        logits = model(inputs)
        total_loss += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
        seen += len(labels)
    return EpochResult(total_loss / max(seen, 1), correct / max(seen, 1))

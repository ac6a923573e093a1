"""Backbone features computed once, so the frozen phase trains only a linear head on them."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from torchgraft.models import GraftedClassifier


@torch.no_grad()
def compute_features(
    model: GraftedClassifier,
    loader: DataLoader[Any],
    device: torch.device,
    *,
    description: str = "features",
    quiet: bool = False,
) -> TensorDataset:
    """(features, labels) for every image in `loader`, with the backbone in eval mode."""
    model.eval()
    features: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    for images, batch_labels in tqdm(loader, desc=description, disable=quiet, leave=False):
        features.append(model.features(images.to(device, non_blocking=True)).float().cpu())
        labels.append(batch_labels)
    return TensorDataset(torch.cat(features), torch.cat(labels))

"""Datasets and loaders yielding (uint8 images, labels) batches."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from torchgraft.data.decode import array_to_tensor, load_image
from torchgraft.data.sources import LabeledImages

Transform = Callable[[torch.Tensor], torch.Tensor]


class ImageDataset(Dataset[tuple[torch.Tensor, int]]):
    """Decodes one image at a time (from disk or from a bundled array) and transforms it."""

    def __init__(self, images: LabeledImages, transform: Transform, channels: int) -> None:
        self.images = images
        self.transform = transform
        self.channels = channels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.decode(index)), int(self.images.labels[index])

    def decode(self, index: int) -> torch.Tensor:
        source = self.images.images[index]
        if isinstance(source, np.ndarray):
            return array_to_tensor(source, self.channels)
        return load_image(source, self.channels)


def make_loader(
    dataset: Dataset[Any],
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    seed: int = 0,
) -> DataLoader[Any]:
    """A DataLoader whose shuffling order depends only on `seed` (and the epoch)."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        generator=generator,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )

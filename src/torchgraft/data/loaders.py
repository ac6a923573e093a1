"""Datasets and loaders yielding (uint8 images, labels) batches."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from torchgraft.artifact import Preprocessing
from torchgraft.data.cache import DecodedSplit
from torchgraft.data.decode import array_to_tensor, load_image
from torchgraft.data.sources import LabeledImages
from torchgraft.data.transforms import augmentation, eval_transform, train_transform

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


class CachedImageDataset(Dataset[tuple[torch.Tensor, int]]):
    """Images already decoded and resized (rows of a uint8 array, perhaps memory-mapped)."""

    def __init__(
        self, pixels: np.ndarray, labels: np.ndarray, augment: Transform | None,
        preset: str = "none",
    ) -> None:  # fmt: skip
        self.pixels = pixels
        self.labels = labels
        self.augment = augment
        self.preset = preset  # the augmentation's name (transforms.augmentation)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(np.array(self.pixels[index]))  # a copy: memmaps are read-only
        if self.augment is not None:
            image = self.augment(image)
        return image, int(self.labels[index])


def split_datasets(
    images: LabeledImages,
    decoded: DecodedSplit,
    preprocessing: Preprocessing,
    augment: str,
) -> tuple[Dataset[tuple[torch.Tensor, int]], Dataset[tuple[torch.Tensor, int]]]:
    """(plain, augmented) datasets over the images that decoded, cached where possible."""
    labels = images.labels[decoded.kept]
    if decoded.pixels is not None:
        extra = augmentation(preprocessing.image_size, augment)
        return (
            CachedImageDataset(decoded.pixels, labels, None),
            CachedImageDataset(decoded.pixels, labels, extra, augment),
        )
    readable = images.subset(decoded.kept)
    channels = preprocessing.channels
    return (
        ImageDataset(readable, eval_transform(preprocessing), channels),
        ImageDataset(readable, train_transform(preprocessing, augment), channels),
    )

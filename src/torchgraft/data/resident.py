"""Batches from decoded images kept on the training device, augmented there in one go.

A GPU step on a small network takes milliseconds; a DataLoader that indexes, augments and
collates images one at a time in Python cannot keep up. When the decoded uint8 images fit
in GPU memory, they are copied there once (as airbench's loader does): a batch is then one
indexing operation, and the `light` augmentation (a random resized crop and a horizontal
flip) is one `grid_sample` over the batch with an affine map per image.

`ResidentBatches` behaves like the DataLoader it replaces, as far as the engine asks: `len`
is the number of batches, `dataset` is sized, and a CPU `generator` reseeded per epoch
decides the shuffling, with the permutation a shuffling DataLoader draws from it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

RESIDENT_AUGMENTS = ("none", "light")  # what can run batched on the device
GPU_MEMORY_SHARE = 0.5  # resident images may take at most this share of free GPU memory
CROP_SCALE = (0.5, 1.0)  # area share kept by the random crop, as in transforms.augmentation
CROP_RATIO = (3 / 4, 4 / 3)  # aspect ratios of the crop, as torchvision's default
_COPY_ROWS = 4096  # images copied to the device per transfer (memmaps stay out of RAM)


def fits_on_device(
    device_type: str, nbytes: int, free_bytes: int | None, augment: str
) -> tuple[bool, str]:
    """Whether decoded images of `nbytes` can live on the device, and if not, why."""
    if device_type != "cuda":
        return False, "resident batches are for GPUs; on a CPU the images are in memory already"
    if augment not in RESIDENT_AUGMENTS:
        return False, f"augment {augment!r} runs per image (resident batches: none or light)"
    if free_bytes is None or nbytes > GPU_MEMORY_SHARE * free_bytes:
        free = "unknown" if free_bytes is None else f"{free_bytes / 1e9:.1f} GB"
        return False, f"{nbytes / 1e9:.1f} GB of images, more than half the free {free}"
    return True, ""


def to_device(pixels: np.ndarray, device: torch.device) -> torch.Tensor:
    """A copy of uint8 rows on `device`, made a slice at a time."""
    resident = torch.empty(pixels.shape, dtype=torch.uint8, device=device)
    for start in range(0, len(pixels), _COPY_ROWS):
        rows = np.ascontiguousarray(pixels[start : start + _COPY_ROWS])
        resident[start : start + len(rows)].copy_(torch.from_numpy(rows), non_blocking=False)
    return resident


class ResidentBatches:
    """(images, labels) batches from tensors on the device; `augment` none or light."""

    def __init__(
        self, pixels: torch.Tensor, labels: torch.Tensor, batch_size: int, *,
        shuffle: bool, augment: str = "none", seed: int = 0,
    ) -> None:  # fmt: skip
        if augment not in RESIDENT_AUGMENTS:
            raise ValueError(f"resident batches augment with {RESIDENT_AUGMENTS}, not {augment}")
        self.dataset = pixels  # sized, as the engine asks of a loader's dataset
        self.labels = labels.to(pixels.device)
        self.batch_size, self.shuffle, self.augment = batch_size, shuffle, augment
        self.generator = torch.Generator().manual_seed(seed)
        self.sampler = None  # no distributed sharding here

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        count, device = len(self.dataset), self.dataset.device
        # What a shuffling DataLoader draws from the same generator: a base seed for its
        # workers (here it seeds the augmentation), then the permutation.
        base_seed = int(torch.empty((), dtype=torch.int64).random_(generator=self.generator))
        order = torch.randperm(count, generator=self.generator) if self.shuffle else None
        on_device = (order if order is not None else torch.arange(count)).to(device)
        device_generator = torch.Generator(device).manual_seed(base_seed)
        for start in range(0, count, self.batch_size):
            index = on_device[start : start + self.batch_size]
            images = self.dataset[index]
            if self.augment == "light":
                images = random_crop_and_flip(images, device_generator)
            yield images, self.labels[index]


def random_crop_and_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random resized crop (area CROP_SCALE, aspect CROP_RATIO) and a horizontal flip with
    probability 1/2 per image, resampled bilinearly back to the size: float pixels 0..255."""
    count, device = len(images), images.device

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(count, device=device, generator=generator)

    area = uniform(*CROP_SCALE)
    ratio = torch.exp(uniform(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])))
    width, height = (area * ratio).sqrt().clamp(max=1), (area / ratio).sqrt().clamp(max=1)
    # grid_sample's coordinates run from -1 to 1: a crop of width w is centred within 1 - w.
    centre_x, centre_y = uniform(-1, 1) * (1 - width), uniform(-1, 1) * (1 - height)
    flip = torch.where(uniform(0, 1) < 0.5, -1.0, 1.0)
    theta = torch.zeros(count, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 0, 2] = width * flip, centre_x
    theta[:, 1, 1], theta[:, 1, 2] = height, centre_y
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images.float(), grid, mode="bilinear", align_corners=False)

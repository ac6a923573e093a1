"""Transforms as named presets (torchvision transforms v2), on uint8 (C, H, W) tensors.

Normalisation is not here: it lives inside the model (`GraftedClassifier`), so exported
models take plain uint8 images and nobody has to re-implement it.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from torchgraft.artifact import Preprocessing
from torchgraft.errors import UserError

# In crop mode only a square from the middle of the image is kept, so a longer side beyond
# this many times the shorter one is trimmed before resizing: a 1x100000 strip would otherwise
# be enlarged to 224 x 22,400,000 pixels (15 GB) only to keep 224 of them. Up to 4:1 (every
# photo and most panoramas) nothing is trimmed and the result is exactly the plain resize.
MAX_CROP_ASPECT = 4


def resize_transform(image_size: int, resize_mode: str, interpolation: str) -> v2.Transform:
    """Bring any image to image_size x image_size the way `resize_mode` says.

    crop: shorter side to image_size, then a centre crop (the ImageNet convention).
    pad: longer side to image_size, then pad to a square (letterbox, nothing cut off).
    squash: stretch to the square, ignoring the aspect ratio.

    Every mode's memory is bounded by the input and image_size squared: crop trims a very
    long side first (`MAX_CROP_ASPECT`), pad keeps at least one pixel of a very short side.
    """
    mode = v2.InterpolationMode(interpolation)
    if resize_mode == "crop":
        return v2.Compose(
            [TrimLongSide(MAX_CROP_ASPECT), v2.Resize(image_size, mode), v2.CenterCrop(image_size)]
        )
    if resize_mode == "pad":
        # CenterCrop pads with zeros when the image is smaller than the crop.
        return v2.Compose([FitInside(image_size, mode), v2.CenterCrop(image_size)])
    if resize_mode == "squash":
        return v2.Resize((image_size, image_size), mode)
    raise UserError(f"unknown resize mode {resize_mode!r}: use crop, pad or squash")


class TrimLongSide:
    """Centre-crops a (..., H, W) image whose longer side is over `ratio` times its shorter
    one down to that ratio; other images pass unchanged."""

    def __init__(self, ratio: int) -> None:
        self.ratio = ratio

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        limit = self.ratio * min(height, width)
        if max(height, width) <= limit:
            return image
        if height > width:
            top = (height - limit) // 2
            return image[..., top : top + limit, :]
        left = (width - limit) // 2
        return image[..., left : left + limit]

    def __repr__(self) -> str:
        return f"TrimLongSide(ratio={self.ratio})"


class FitInside:
    """Resizes a (..., H, W) image so its longer side is `size`, keeping the aspect ratio, with
    at least one pixel on the shorter side (torchvision's `max_size` resize rounds a side of
    under one pixel down to an empty image)."""

    def __init__(self, size: int, interpolation: v2.InterpolationMode) -> None:
        self.size = size
        self.interpolation = interpolation

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        longer = max(height, width)
        short_side = max(1, int(self.size * min(height, width) / longer))  # as torchvision
        target = [self.size, short_side] if height >= width else [short_side, self.size]
        return v2.functional.resize(image, target, self.interpolation, antialias=True)

    def __repr__(self) -> str:
        return f"FitInside(size={self.size}, interpolation={self.interpolation.value})"


def eval_transform(preprocessing: Preprocessing) -> v2.Transform:
    """What validation, prediction and export see: the resize and nothing random."""
    p = preprocessing
    return resize_transform(p.image_size, p.resize_mode, p.interpolation)


def train_transform(preprocessing: Preprocessing, augment: str) -> v2.Transform:
    """The resize plus an augmentation preset: none, light, trivial or randaugment."""
    extra = augmentation(preprocessing.image_size, augment)
    resize = eval_transform(preprocessing)
    return resize if extra is None else v2.Compose([resize, extra])


def augmentation(image_size: int, augment: str) -> v2.Transform | None:
    """The random part of training transforms, for images already at `image_size`.

    Decoded-image caches store resized images, so this is all that runs per epoch.
    """
    if augment == "none":
        return None
    if augment == "light":
        return v2.Compose(
            [
                v2.RandomResizedCrop(image_size, scale=(0.5, 1.0), antialias=True),
                v2.RandomHorizontalFlip(),
            ]
        )
    if augment == "trivial":
        return v2.TrivialAugmentWide()
    if augment == "randaugment":
        return v2.RandAugment()
    raise UserError(f"unknown augmentation {augment!r}: use none, light, trivial or randaugment")

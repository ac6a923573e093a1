"""Transforms as named presets (torchvision transforms v2), on uint8 (C, H, W) tensors.

Normalisation is not here: it lives inside the model (`GraftedClassifier`), so exported
models take plain uint8 images and nobody has to re-implement it.
"""

from __future__ import annotations

from torchvision.transforms import v2

from torchgraft.artifact import Preprocessing
from torchgraft.errors import UserError


def resize_transform(image_size: int, resize_mode: str, interpolation: str) -> v2.Transform:
    """Bring any image to image_size x image_size the way `resize_mode` says.

    crop: shorter side to image_size, then a centre crop (the ImageNet convention).
    pad: longer side to image_size, then pad to a square (letterbox, nothing cut off).
    squash: stretch to the square, ignoring the aspect ratio.
    """
    mode = v2.InterpolationMode(interpolation)
    if resize_mode == "crop":
        return v2.Compose([v2.Resize(image_size, mode), v2.CenterCrop(image_size)])
    if resize_mode == "pad":
        # CenterCrop pads with zeros when the image is smaller than the crop.
        return v2.Compose([v2.Resize(None, mode, max_size=image_size), v2.CenterCrop(image_size)])
    if resize_mode == "squash":
        return v2.Resize((image_size, image_size), mode)
    raise UserError(f"unknown resize mode {resize_mode!r}: use crop, pad or squash")


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

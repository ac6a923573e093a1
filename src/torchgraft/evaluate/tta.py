"""Test-time augmentation: average the model's predictions over several views of each image.

The views follow torchvision's TenCrop convention: the image enlarged by 1/0.875 and cut into
its centre and four corner crops at the training size, plus the plain image, each optionally
mirrored. Mirroring is only used when the run trained with mirrored images (augment "light"):
a digit or a text label read backwards is a different picture, not the same one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CROP_RATIO = 0.875  # the crop is 87.5% of the enlarged image, as in ImageNet evaluation
CROPS = ("center", "top_left", "top_right", "bottom_left", "bottom_right")
AUGMENTS_WITH_FLIPS = ("light",)


def tta_views(augment: str) -> list[str]:
    """The view names for a run trained with `augment`; "plain" is always first."""
    views = ["plain", *(f"crop_{name}" for name in CROPS)]
    if augment in AUGMENTS_WITH_FLIPS:
        views += [f"flip_{view}" for view in views]
    return views


def apply_view(images: torch.Tensor, view: str) -> torch.Tensor:
    """One named view of a uint8 batch (N, C, S, S), at the same size S."""
    if view.startswith("flip_"):
        return apply_view(images, view.removeprefix("flip_")).flip(-1)
    if view == "plain":
        return images
    size = images.shape[-1]
    enlarged = round(size / CROP_RATIO)
    big = F.interpolate(images.float(), size=(enlarged, enlarged), mode="bilinear",
                        antialias=True, align_corners=False)  # fmt: skip
    big = big.round().clamp(0, 255).to(torch.uint8)
    top, left = crop_origin(view.removeprefix("crop_"), enlarged, size)
    return big[..., top : top + size, left : left + size]


def crop_origin(name: str, enlarged: int, size: int) -> tuple[int, int]:
    far = enlarged - size
    origins = {
        "center": (far // 2, far // 2),
        "top_left": (0, 0),
        "top_right": (0, far),
        "bottom_left": (far, 0),
        "bottom_right": (far, far),
    }
    return origins[name]

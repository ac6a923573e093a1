"""Turning files and in-memory images into uint8 tensors (C, H, W), the pipeline's currency."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from torchgraft.errors import UserError


def load_image(path: Path, channels: int) -> torch.Tensor:
    """Decode an image file to a (channels, H, W) uint8 tensor, upright (EXIF applied)."""
    with Image.open(path) as image:
        return pil_to_tensor(ImageOps.exif_transpose(image), channels)


def pil_to_tensor(image: Image.Image, channels: int) -> torch.Tensor:
    """A PIL image in any mode as a (channels, H, W) uint8 tensor; alpha is composited on white."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    image = image.convert("L" if channels == 1 else "RGB")
    array = np.array(image, dtype=np.uint8)  # a writable copy: PIL's buffer is read-only
    return array_to_tensor(array, channels)


def array_to_tensor(array: np.ndarray, channels: int) -> torch.Tensor:
    """An (H, W) or (H, W, C) image array as a (channels, H, W) uint8 tensor.

    uint8 arrays are used as they are (no copy where the layout allows); float arrays are read
    as values in [0, 1].
    """
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise UserError(
            f"expected an image array of shape (H, W) or (H, W, 1|3|4), got {tuple(array.shape)}"
        )
    if array.dtype != np.uint8:
        array = (np.clip(array.astype(np.float32), 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    tensor = torch.from_numpy(array)
    tensor = tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1)
    return match_channels(tensor, channels)


def match_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    """Convert a (C, H, W) uint8 image to 1 (luma) or 3 (RGB) channels."""
    if image.shape[0] == 4:  # RGBA: composite on white, as for files
        alpha = image[3:].float() / 255
        image = (image[:3].float() * alpha + 255 * (1 - alpha)).round().to(torch.uint8)
    if image.shape[0] == channels:
        return image
    if channels == 3:
        return image.expand(3, -1, -1).contiguous()
    weights = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)  # ITU-R 601 luma, as PIL uses
    return (image.float() * weights).sum(0, keepdim=True).round().to(torch.uint8)

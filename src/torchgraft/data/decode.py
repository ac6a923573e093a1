"""Turning files and in-memory images into uint8 tensors (C, H, W), the pipeline's currency.

Decoding never takes training down: a file that cannot be read raises `UnreadableImage` with
a reason a person understands, and the caller skips it and lists it. What can be read is
normalised: EXIF orientation applied; grayscale, palette, alpha (composited on white), CMYK
and 16-bit images converted; GIFs read at their first frame.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from torchgraft.errors import UserError

# Pillow's own guard (about 89 megapixels) against decompression bombs, enforced as an error.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
_HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


class UnreadableImage(Exception):
    """A file that cannot be used as an image; `reason` says why, for skipped.csv and doctor."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class TooManyPixels(UnreadableImage):
    """An image whose header declares more pixels than allowed, refused before decoding (a
    server answers 413: the file is not broken, only too big to decode)."""


@dataclass(frozen=True)
class ImageInfo:
    """What a successful decode learned about a file (for the data audit)."""

    width: int
    height: int
    mode: str  # Pillow mode before conversion: RGB, L, P, RGBA, CMYK, I;16, ...
    format: str  # JPEG, PNG, WEBP, ...


def load_image(path: Path, channels: int) -> torch.Tensor:
    """Decode an image file to a (channels, H, W) uint8 tensor, upright (EXIF applied)."""
    return decode_file(path, channels)[0]


def decode_file(path: Path, channels: int) -> tuple[torch.Tensor, ImageInfo]:
    """Decode `path` fully (so truncation is caught here), or raise `UnreadableImage`."""
    try:
        size = path.stat().st_size
    except OSError as error:  # a CSV row naming a missing file, a broken link, no permission
        raise UnreadableImage(path, f"cannot open ({error.strerror or error})") from None
    if size == 0:
        raise UnreadableImage(path, "empty file (0 bytes)")
    return _decode(path, path, channels)


def decode_bytes(
    data: bytes,
    channels: int,
    name: str = "upload",
    *,
    max_pixels: int = MAX_PIXELS,
    draft_size: int | None = None,
) -> tuple[torch.Tensor, ImageInfo]:
    """Decode an image file held in memory (an HTTP upload) by the same rules as a file on disk;
    `name` stands for it in the `UnreadableImage` message.

    `max_pixels` (at most `MAX_PIXELS`) refuses bigger images from their header, before any
    decoding, with `TooManyPixels`. `draft_size` lets a JPEG decode at 1/2, 1/4 or 1/8 scale
    while both sides stay at least that long: far less time and memory for a big photo, but
    not bit-identical to a full decode (the ImageInfo keeps the file's own size).
    """
    if not data:
        raise UnreadableImage(Path(name), "empty file (0 bytes)")
    return _decode(io.BytesIO(data), Path(name), channels, max_pixels, draft_size)


def _decode(
    source: Path | BinaryIO,
    path: Path,
    channels: int,
    max_pixels: int = MAX_PIXELS,
    draft_size: int | None = None,
) -> tuple[torch.Tensor, ImageInfo]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:  # reads the header only
                info = ImageInfo(image.width, image.height, image.mode, image.format or "?")
                _refuse_bombs(path, image, max_pixels)
                image.seek(0)  # the first frame of an animation
                if draft_size is not None:  # a no-op for formats other than JPEG
                    image.draft("L" if channels == 1 else "RGB", (draft_size, draft_size))
                upright = ImageOps.exif_transpose(image)
                upright.load()
                return pil_to_tensor(upright, channels), info
    except UnreadableImage:
        raise
    except UnidentifiedImageError:
        raise UnreadableImage(path, "not an image (unrecognised format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise TooManyPixels(path, f"decompression bomb (over {MAX_PIXELS} pixels)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as error:  # Pillow's corrupt-data errors
        raise UnreadableImage(path, f"truncated or corrupt ({_first_line(error)})") from None


def _refuse_bombs(path: Path, image: Image.Image, max_pixels: int = MAX_PIXELS) -> None:
    """Refuse an image too big to decode, from the size its header declares."""
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise TooManyPixels(
            path, f"decompression bomb ({width}x{height} pixels, limit {MAX_PIXELS})"
        )
    if width * height > max_pixels:
        raise TooManyPixels(
            path,
            f"{width}x{height} pixels ({width * height / 1e6:.1f} megapixels) is over the limit "
            f"of {max_pixels / 1e6:.1f} megapixels",
        )


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def pil_to_tensor(image: Image.Image, channels: int) -> torch.Tensor:
    """A PIL image in any mode as a (channels, H, W) uint8 tensor; alpha is composited on white."""
    if image.mode in _HIGH_BIT_MODES:
        image = _to_8_bit(image)
    if image.mode == "LAB":
        image = lab_to_srgb(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    image = image.convert("L" if channels == 1 else "RGB")
    array = np.array(image, dtype=np.uint8)  # a writable copy: PIL's buffer is read-only
    return array_to_tensor(array, channels)


def lab_to_srgb(image: Image.Image) -> Image.Image:
    """A CIE LAB image (TIFF's CIELab) in sRGB, through Pillow's colour management: Pillow's
    `convert` has no LAB -> L, so without this a LAB file is readable in RGB only."""
    transform = ImageCms.buildTransform(
        ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB"
    )
    converted = ImageCms.applyTransform(image, transform)
    assert converted is not None  # None only when converting in place
    return converted


def _to_8_bit(image: Image.Image) -> Image.Image:
    """16-bit and float images scaled into 0..255 (Pillow's convert would clip them)."""
    values = np.asarray(image, dtype=np.float64)
    top = 65535.0 if image.mode.startswith("I;16") else max(float(values.max()), 1.0)
    if image.mode == "F" and values.max() <= 1.0:
        top = 1.0
    scaled = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


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

"""Turning files and in-memory images into uint8 tensors (C, H, W), the pipeline's currency.

This is the one decoding boundary of every stage (training, doctor, predict, explain, serve).
Decoding never takes a command down: a file that cannot be read raises `UnreadableImage` with
a reason a person understands, and the caller skips it and lists it. The rules:

- Pillow is asked to try only the allowed formats (`allowed_formats`: JPEG, PNG, WebP, BMP,
  GIF, TIFF, plus those named in $TORCHGRAFT_EXTRA_IMAGE_FORMATS). Pillow identifies a file by
  its content, not its name, so without this an EPS renamed .jpg would run Ghostscript and a
  DDS would be decoded by a slow pure-Python loop. Anything else is "unsupported format".
- Every exception a decoder raises (OSError, but also ValueError, struct.error, SyntaxError,
  ZeroDivisionError, NotImplementedError, MemoryError, ...) becomes `UnreadableImage`; only
  KeyboardInterrupt and SystemExit go through.
- The size an image declares is checked before its pixels are decoded, again for the frame
  that is decoded, and once more after decoding: at most `MAX_PIXELS` (or a caller's lower
  limit), and sides in a ratio of at most `MAX_ASPECT_RATIO`.

What can be read is normalised: EXIF orientation applied; grayscale, palette, alpha
(composited on white), CMYK and 16-bit images converted; animations read at their first frame.
"""

from __future__ import annotations

import functools
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from torchgraft.errors import UserError, did_you_mean

# Pillow's default guard against decompression bombs (about 89 megapixels), as an error.
MAX_PIXELS = 89_478_485
# Longer side over shorter side. Photos are 4:3 to 16:9, phone panoramas about 4:1, and a
# stitched 360-degree panorama rarely passes 10:1; past 50:1 a file is a strip or a line
# (or a header that lies), with nothing a classifier could see in a square input.
MAX_ASPECT_RATIO = 50
# The formats decoded by default: the common photo formats, each read by a compiled decoder.
DEFAULT_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
# Comma-separated Pillow format names to read as well (e.g. "PPM,ICO"): opt-in, because a
# plugin outside the defaults may be slow (DDS), or decode images embedded in the file (BLP,
# ICO) that only their own header bounds.
EXTRA_FORMATS_VARIABLE = "TORCHGRAFT_EXTRA_IMAGE_FORMATS"
# Formats never decoded, not even on request: Pillow hands them to an outside interpreter.
REFUSED_FORMATS = {"EPS": "Pillow runs Ghostscript, a PostScript interpreter, to read it"}
_HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_PREFIX_BYTES = 16  # what Pillow's format checks look at (Image.open reads as many)

# Pillow raises DecompressionBombError past twice MAX_IMAGE_PIXELS, and checks the size of
# images embedded in a file (an ICO's PNG, a GIF frame) that no header check here can see.
# Set once, at import, so that its error falls at MAX_PIXELS: changing warning filters per
# decode instead is process-global and not thread-safe, and the server decodes in threads.
Image.MAX_IMAGE_PIXELS = (MAX_PIXELS + 1) // 2
# Below its error Pillow only warns; the limit here is MAX_PIXELS, so that warning is noise.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
# Pillow's remarks on a corrupt file (a TIFF tag past the end...): the file is used or skipped
# with a reason either way, so they are noise on the terminal too.
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")


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


def allowed_formats() -> tuple[str, ...]:
    """The Pillow formats decoded: `DEFAULT_FORMATS` plus $TORCHGRAFT_EXTRA_IMAGE_FORMATS."""
    return _formats_with(os.environ.get(EXTRA_FORMATS_VARIABLE, ""))


@functools.cache
def _formats_with(extra: str) -> tuple[str, ...]:
    names = [name.strip().upper() for name in extra.split(",") if name.strip()]
    if names:
        Image.init()  # registers every plugin, so that any name Pillow reads can be checked
    for name in names:
        if name in REFUSED_FORMATS:
            raise UserError(
                f"{EXTRA_FORMATS_VARIABLE} names {name}, which torchgraft never decodes: "
                f"{REFUSED_FORMATS[name]}. Convert the files to PNG first."
            )
        if name not in Image.OPEN:
            known = sorted(set(Image.OPEN) - set(REFUSED_FORMATS))
            raise UserError(
                f"{EXTRA_FORMATS_VARIABLE} names {name!r}, which is not a format Pillow reads: "
                f"choose from {', '.join(known)}.{did_you_mean(name, known)}"
            )
    return DEFAULT_FORMATS + tuple(dict.fromkeys(n for n in names if n not in DEFAULT_FORMATS))


def load_image(path: Path, channels: int) -> torch.Tensor:
    """Decode an image file to a (channels, H, W) uint8 tensor, upright (EXIF applied)."""
    return decode_file(path, channels)[0]


def decode_file(
    path: Path, channels: int, *, draft_size: int | None = None
) -> tuple[torch.Tensor, ImageInfo]:
    """Decode `path` fully (so truncation is caught here), or raise `UnreadableImage`.
    `draft_size`: as for `decode_bytes` (a thumbnail need not decode a photo at full size)."""
    try:
        size = path.stat().st_size
    except OSError as error:  # a CSV row naming a missing file, a broken link, no permission
        raise UnreadableImage(path, f"cannot open ({error.strerror or error})") from None
    if size == 0:
        raise UnreadableImage(path, "empty file (0 bytes)")
    return _decode(path, path, channels, draft_size=draft_size)


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
    formats = allowed_formats()  # outside the try: a bad setting is the user's, not the file's
    try:
        with _open(source, path, formats) as image:  # reads the header only
            info = ImageInfo(image.width, image.height, image.mode, image.format or "?")
            check_declared_size(path, image.size, max_pixels)
            image.seek(0)  # the first frame of an animation or a multi-page TIFF
            check_declared_size(path, image.size, max_pixels)  # a frame has its own size
            if draft_size is not None:  # a no-op for formats other than JPEG
                image.draft("L" if channels == 1 else "RGB", (draft_size, draft_size))
            ImageOps.exif_transpose(image, in_place=True)  # decodes; no copy when upright
            image.load()
            # What the decoder made, which for an embedded image (ICO, BLP) is not
            # necessarily what the container declared.
            check_declared_size(path, image.im.size, max_pixels)
            return pil_to_tensor(image, channels), info
    except UnreadableImage:
        raise
    except Image.DecompressionBombError:
        raise TooManyPixels(path, f"decompression bomb (over {MAX_PIXELS} pixels)") from None
    except Exception as error:  # any decoder bug a hostile file trips is still the file's fault
        raise UnreadableImage(path, decoder_failure(error)) from None


def _open(source: Path | BinaryIO, path: Path, formats: tuple[str, ...]) -> Image.Image:
    """Pillow's lazy open, trying only `formats`; an unidentified file says what it seems to be."""
    try:
        return Image.open(source, formats=formats)
    except UnidentifiedImageError:
        raise UnreadableImage(path, unidentified_reason(_prefix(source), formats)) from None


def _prefix(source: Path | BinaryIO) -> bytes:
    if isinstance(source, Path):
        with open(source, "rb") as file:
            return file.read(_PREFIX_BYTES)
    source.seek(0)
    return source.read(_PREFIX_BYTES)


def unidentified_reason(prefix: bytes, formats: tuple[str, ...]) -> str:
    """Why no allowed plugin took a file, from its first bytes: another format's signature
    (told by Pillow's own signature checks, which read those bytes and run no decoder), a
    corrupt header of an allowed format, or nothing recognisable."""
    Image.init()
    for name in Image.ID:
        accept = Image.OPEN[name][1]
        if accept is None or accept(prefix) is not True:
            continue
        if name in formats:
            return f"truncated or corrupt ({name} header unreadable)"
        if name in REFUSED_FORMATS:
            return f"unsupported format ({name}; never decoded: {REFUSED_FORMATS[name]})"
        return (
            f"unsupported format ({name}): torchgraft reads {', '.join(formats)}; convert the "
            f"file, or set {EXTRA_FORMATS_VARIABLE}={name} to read it"
        )
    return "not an image (unrecognised format)"


def check_declared_size(path: Path, size: tuple[int, int], max_pixels: int = MAX_PIXELS) -> None:
    """Refuse an image too big to decode, or too thin to classify, from its (width, height)."""
    width, height = size
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
    if min(width, height) < 1:
        raise UnreadableImage(path, f"empty image ({width}x{height} pixels)")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise UnreadableImage(
            path,
            f"{width}x{height} pixels: too thin to classify (sides in a ratio over "
            f"{MAX_ASPECT_RATIO}:1); crop it to the part worth classifying, or leave it out",
        )


def decoder_failure(error: Exception) -> str:
    """The reason a decoder's exception gives, for a person reading skipped.csv."""
    if isinstance(error, MemoryError):
        return "too large to decode in the memory available"
    if isinstance(error, (OSError, ValueError, SyntaxError, EOFError)):  # Pillow's usual ones
        return f"truncated or corrupt ({_first_line(error)})"
    kind = "struct.error" if type(error).__module__ == "struct" else type(error).__name__
    return f"truncated or corrupt ({kind}: {_first_line(error)})"


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
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        image = Image.alpha_composite(background, rgba)
    target = "L" if channels == 1 else "RGB"
    if image.mode != target:  # convert copies even when the mode already matches
        image = image.convert(target)
    # asarray wraps one read-only export of the pixels, then a writable copy: for 81
    # megapixels 1 s and two copies, where np.array(image) took 6 s.
    array = np.asarray(image).copy()
    return array_to_tensor(array, channels)


def lab_to_srgb(image: Image.Image) -> Image.Image:
    """A CIE LAB image (TIFF's CIELab) in sRGB, through Pillow's colour management: Pillow's
    `convert` has no LAB -> L, so without this a LAB file is readable in RGB only."""
    converted = ImageCms.applyTransform(image, _lab_to_srgb_transform())
    assert converted is not None  # None only when converting in place
    return converted


@functools.cache
def _lab_to_srgb_transform() -> ImageCms.ImageCmsTransform:
    """Built once: making the two profiles and the transform costs more than applying it to a
    small image. (LittleCMS transforms may be applied from several threads at once.)"""
    return ImageCms.buildTransform(
        ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB"
    )


def _to_8_bit(image: Image.Image) -> Image.Image:
    """16-bit and float images scaled into 0..255 (Pillow's convert would clip them).

    In float32 and in place: an 89-megapixel image takes 360 MB here, not the 2 GB of float64
    temporaries. NaN and infinities count as black."""
    values = np.array(image, dtype=np.float32)  # a writable copy
    np.nan_to_num(values, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    top = 65535.0 if image.mode.startswith("I;16") else max(float(values.max()), 1.0)
    if image.mode == "F" and values.max() <= 1.0:
        top = 1.0
    values *= 255.0 / top
    values += 0.5
    np.clip(values, 0, 255, out=values)
    return Image.fromarray(values.astype(np.uint8))


def array_to_tensor(array: np.ndarray, channels: int) -> torch.Tensor:
    """An (H, W) or (H, W, C) image array as a (channels, H, W) uint8 tensor.

    uint8 arrays are used as they are (no copy where the layout allows); float arrays are read
    as values in [0, 1], other integer arrays as 0..255 (`to_uint8`).
    """
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise UserError(
            f"expected an image array of shape (H, W) or (H, W, 1|3|4), got {tuple(array.shape)}"
        )
    tensor = torch.from_numpy(to_uint8(array))
    tensor = tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1)
    return match_channels(tensor, channels)


def to_uint8(array: np.ndarray) -> np.ndarray:
    """uint8 pixels: uint8 as it is (no copy), floats read as values in [0, 1] (others are
    refused), other integers as 0..255."""
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind in "iu":
        return np.clip(array, 0, 255).astype(np.uint8)
    values = array.astype(np.float32)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if low < -0.01 or high > 1.01:  # 0..255 in a float array would clip to white: refuse it
        raise UserError(
            f"float image values run from {low:g} to {high:g}, but floats are read as values "
            "in [0, 1]: divide 0..255 pixel values by 255, or pass uint8"
        )
    return (np.clip(values, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


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

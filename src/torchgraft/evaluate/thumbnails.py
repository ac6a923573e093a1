"""The images an audit report names, as small pictures to embed in a page.

The report names an image by its path relative to the data folder, or, in a bundled array
set, by its place ("mnist5k train #12"): `audit.image_name`. The names are resolved back to
pixels through the same splits the audit saw (its source, val fraction and seed), so a name
that is not a file (an array row, a file name that is not UTF-8) still finds its image.
Every file is decoded through data.decode, as training decodes it; one that fails has no
thumbnail and a reason instead.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from torchgraft.data.audit import image_name
from torchgraft.data.decode import UnreadableImage, array_to_tensor, decode_file
from torchgraft.data.sources import DataSplits, LabeledImages, data_folder, load_data
from torchgraft.errors import UserError
from torchgraft.evaluate.pages import data_uri

logger = logging.getLogger(__name__)

THUMBNAIL_SIDE = 80  # pixels, the longer side: small enough for hundreds in one page
_JPEG_QUALITY = 85


@dataclass(frozen=True)
class Thumbnail:
    """A picture to show (`uri`, a data URI), or why there is none (`reason`)."""

    uri: str | None
    reason: str = ""


class Thumbnails:
    """Thumbnails of the images a report names, each made once."""

    def __init__(self, source: str, val_fraction: float, seed: int, channels: int) -> None:
        self.channels = channels  # decoded as training decodes: what the model is shown
        self._places = _places(source, val_fraction, seed)
        self._made: dict[str, Thumbnail] = {}

    def __call__(self, name: str) -> Thumbnail:
        if name not in self._made:
            self._made[name] = self._make(name)
        return self._made[name]

    def _make(self, name: str) -> Thumbnail:
        place = self._places.get(name)
        if place is None:
            return Thumbnail(None, "not in the data any more")
        images, index = place
        try:
            pixels = _pixels(images, index, self.channels)
        except UnreadableImage as error:
            return Thumbnail(None, error.reason)
        return Thumbnail(thumbnail_uri(pixels))


def _places(source: str, val_fraction: float, seed: int) -> dict[str, tuple[LabeledImages, int]]:
    """Each image's report name -> its split and index there. Empty when the source cannot be
    loaded any more (moved since the audit): the page then shows no pictures, and says why."""
    try:
        data = load_data(source, val_fraction=val_fraction, seed=seed)
    except UserError as error:
        logger.warning("no thumbnails: %s", error)
        return {}
    root = data_folder(data.source)
    places = {}
    for used_in, split in _splits(data):
        for index in range(len(split)):
            places[image_name(data, used_in, index, root)] = (split, index)
    return places


def _splits(data: DataSplits) -> list[tuple[str, LabeledImages]]:
    named = [("train", data.train), ("val", data.val), ("test", data.test)]
    return [(used_in, split) for used_in, split in named if split is not None]


def _pixels(images: LabeledImages, index: int, channels: int) -> torch.Tensor:
    if isinstance(images.images, np.ndarray):
        return array_to_tensor(images.images[index], channels)
    # draft: a JPEG photo decodes at 1/2 to 1/8 scale, many times faster, for a small picture
    return decode_file(Path(images.images[index]), channels, draft_size=THUMBNAIL_SIDE)[0]


def thumbnail_uri(pixels: torch.Tensor, side: int = THUMBNAIL_SIDE) -> str:
    """A (C, H, W) uint8 image with its longer side scaled to `side`, as a data URI: PNG or
    JPEG, whichever is smaller (PNG for flat digits and drawings, JPEG for photos)."""
    image = Image.fromarray(pixels.permute(1, 2, 0).squeeze(2).numpy())
    scale = side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    # Small images (28 px digits) are enlarged as blocks of pixels, not blurred.
    resample = Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.NEAREST
    image = image.resize(size, resample)
    encoded = {mime: _encoded(image, kind) for mime, kind in _FORMATS.items()}
    mime = min(encoded, key=lambda key: len(encoded[key]))
    return data_uri(encoded[mime], mime)


_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG"}


def _encoded(image: Image.Image, kind: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, kind, **({"quality": _JPEG_QUALITY} if kind == "JPEG" else {}))
    return buffer.getvalue()

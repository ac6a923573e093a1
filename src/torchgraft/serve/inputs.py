"""What prediction accepts, turned into single images: files, folders, globs, bytes, arrays.

A folder is searched recursively for image files, in sorted order; a glob pattern (`*`, `?`,
`[`) expands to its matches. A path that names nothing is a user error (a typo should not
pass as an empty result); a file that exists but does not decode is the caller's to skip.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from torchgraft.data import array_to_tensor, load_image, pil_to_tensor
from torchgraft.data.decode import decode_bytes, match_channels
from torchgraft.data.sources import IMAGE_EXTENSIONS
from torchgraft.errors import UserError

ImageInput = str | Path | bytes | Image.Image | np.ndarray | torch.Tensor

_GLOB_CHARACTERS = frozenset("*?[")


def as_image_list(images: ImageInput | Iterable[ImageInput]) -> list[ImageInput]:
    """A flat list of single images: folders and globs expanded to their image files, a 4-D
    array or tensor split into its images."""
    if isinstance(images, (str, Path)):
        return list(expand_path(images))
    if isinstance(images, (bytes, Image.Image)):
        return [images]
    if isinstance(images, (np.ndarray, torch.Tensor)):
        return list(images) if images.ndim == 4 else [images]
    flat: list[ImageInput] = []
    for image in images:
        flat.extend(as_image_list(image))
    return flat


def expand_path(path: str | Path) -> list[Path]:
    """The image files `path` stands for: itself, the images under a folder, a glob's matches."""
    given = Path(path).expanduser()
    if given.is_file():
        return [given]  # named explicitly: tried whatever its suffix, skipped if it won't decode
    if given.is_dir():
        found = folder_images(given)
        if not found:
            raise UserError(
                f"folder {given} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})"
            )
        return found
    if _GLOB_CHARACTERS & set(str(path)):
        return _glob_images(str(given))
    raise UserError(f"image not found: {path}. Pass an image file, a folder or a glob pattern.")


def folder_images(folder: Path) -> list[Path]:
    """Image files under `folder`, recursively, in sorted order (hidden files left out)."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and p.is_file()
    )


def _glob_images(pattern: str) -> list[Path]:
    matches = sorted(Path(match) for match in glob.glob(pattern, recursive=True))
    files: list[Path] = []
    for match in matches:
        files.extend(folder_images(match) if match.is_dir() else [match])
    if not files:
        raise UserError(
            f'no images match {pattern!r}. Check the pattern; quote it ("photos/*.jpg") so '
            "the shell does not expand it first."
        )
    return files


def to_uint8_tensor(image: ImageInput, channels: int) -> torch.Tensor:
    """Any supported image as a (channels, H, W) uint8 tensor.

    Files and bytes that do not decode raise `UnreadableImage` (the reason says why)."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.exists():
            raise UserError(f"image not found: {path}")
        return load_image(path, channels)
    if isinstance(image, bytes):
        return decode_bytes(image, channels)[0]
    if isinstance(image, Image.Image):
        return pil_to_tensor(image, channels)
    if isinstance(image, np.ndarray):
        return array_to_tensor(image, channels)
    if isinstance(image, torch.Tensor):
        return tensor_to_uint8(image, channels)
    raise UserError(
        f"cannot predict on a {type(image).__name__}: pass a path, bytes, PIL image, array or "
        "tensor"
    )


def tensor_to_uint8(image: torch.Tensor, channels: int) -> torch.Tensor:
    """A (C, H, W) or (H, W) tensor, uint8 or float in [0, 1], as uint8 (C, H, W)."""
    image = image.detach().cpu()
    if image.ndim == 2:
        image = image.unsqueeze(0)
    if image.ndim != 3 or image.shape[0] not in (1, 3, 4):
        raise UserError(
            f"expected a (C, H, W) image tensor with 1, 3 or 4 channels, got {tuple(image.shape)}"
        )
    if image.dtype != torch.uint8:
        image = (image.float().clamp(0, 1) * 255).round().to(torch.uint8)
    return match_channels(image, channels)


def describe(image: ImageInput, index: int) -> str:
    """How a record names its image: the path, or the input's type and position."""
    if isinstance(image, (str, Path)):
        return str(image)
    return f"{type(image).__name__} {index}"

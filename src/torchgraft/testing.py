"""Tiny image folders and tiny runs for tests, tutorials and bug reports (no downloads).

Each generated class has its own colour and stripe direction, so even a small network can
tell them apart in a few steps, while the images still go through real files and decoders.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

DEFAULT_CLASSES = ("circle", "square", "triangle")
_COLOURS = ((220, 40, 40), (40, 160, 60), (40, 70, 220), (230, 180, 30), (150, 50, 180))


def class_image(label: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """An (size, size, 3) uint8 image whose colour and stripes say which class it is.

    The stripes' phase and a smooth random texture vary with `seed`, so two images of one
    class are different pictures (not near duplicates), as in real data.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    frequency = 0.6 + 0.3 * (label // 2)
    stripes = np.sin((x if label % 2 == 0 else y) * frequency + rng.uniform(0, 2 * np.pi)) > 0
    colour = np.array(_COLOURS[label % len(_COLOURS)], dtype=np.float32)
    image = np.where(stripes[..., None], colour, colour * 0.35)
    coarse = Image.fromarray(rng.integers(0, 256, (4, 4), dtype=np.uint8))
    texture = np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC), np.float32)
    image = image + (texture[..., None] - 128) * 0.3 + rng.normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def file_hashes(folder: Path) -> dict[str, str]:
    """The sha256 of every file under `folder`, by relative path: to show a run untouched."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def make_image_folder(
    root: str | Path,
    classes: Sequence[str] = DEFAULT_CLASSES,
    per_class: int = 8,
    size: int = 32,
    split: bool = False,
    val_folder: str = "val",
    suffix: str = ".png",
) -> Path:
    """Write a folder of generated images: root/<class>/i.png, or root/{train,val}/<class>/.

    With `split`, a quarter of each class (at least one image) goes to `val_folder`.
    """
    root = Path(root)
    for label, name in enumerate(classes):
        for index in range(per_class):
            held_out = split and index < max(1, per_class // 4)
            folder = root / (val_folder if held_out else "train") / name if split else root / name
            folder.mkdir(parents=True, exist_ok=True)
            image = class_image(label, size, seed=label * 1000 + index)
            Image.fromarray(image).save(folder / f"{name}_{index:03d}{suffix}")
    return root


# Odd-but-valid files (each must be trained on) and bad files (each must be skipped), by kind.
ODD_KINDS = (
    "cmyk_jpeg", "gray16_png", "rotated_jpeg", "rgba_png", "palette_png", "palette_alpha_gif",
    "grayscale_jpeg", "webp", "bmp", "animated_gif", "tiff", "gray_alpha_png",
)  # fmt: skip
BAD_KINDS = (
    "truncated_jpeg", "truncated_png", "corrupt_png", "empty_jpg", "text_as_jpg",
    "html_as_png", "decompression_bomb",
)  # fmt: skip


def make_messy_folder(root: str | Path, per_class: int = 10, size: int = 32) -> dict[str, Path]:
    """A two-class folder of good images plus one file of every odd and every bad kind.

    Returns {kind: path} for the odd and bad files; everything else in the folder is a plain
    PNG. Nothing is downloaded: every file is generated here.
    """
    root = make_image_folder(root, classes=("circle", "square"), per_class=per_class, size=size)
    base = Image.fromarray(class_image(0, size, seed=4242))
    folder = root / "circle"
    files: dict[str, Path] = {}
    for kind in ODD_KINDS + BAD_KINDS:
        files[kind] = _WRITERS[kind](base, folder / kind)
    return files


def _save(image: Image.Image, path: Path, **options: Any) -> Path:
    image.save(path, **options)
    return path


def _truncated(image: Image.Image, path: Path, format_name: str) -> Path:
    _save(image, path, format=format_name)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _corrupt_png(image: Image.Image, path: Path) -> Path:
    _save(image, path, format="PNG")
    data = bytearray(path.read_bytes())
    data[60:80] = bytes(20)  # zero a stretch inside the image data: the CRC check fails
    path.write_bytes(bytes(data))
    return path


def _rotated(image: Image.Image, path: Path) -> Path:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display", as phones write
    return _save(image.resize((image.width * 2, image.height)), path, exif=exif)


def _gray16(image: Image.Image, path: Path) -> Path:
    values = np.asarray(image.convert("L"), dtype=np.uint16) * 257
    return _save(Image.fromarray(values), path)  # Pillow stores uint16 as mode I;16


def _animated(image: Image.Image, path: Path) -> Path:
    second = Image.fromarray(255 - np.asarray(image))
    return _save(image, path, save_all=True, append_images=[second], duration=100)


def _bomb(image: Image.Image, path: Path) -> Path:
    # 10,000 x 10,000 one-bit pixels: a tiny PNG that would decode to 100 megapixels.
    return _save(Image.new("1", (10_000, 10_000)), path, format="PNG")


_WRITERS = {
    "cmyk_jpeg": lambda im, p: _save(im.convert("CMYK"), p.with_suffix(".jpg")),
    "gray16_png": lambda im, p: _gray16(im, p.with_suffix(".png")),
    "rotated_jpeg": lambda im, p: _rotated(im, p.with_suffix(".jpg")),
    "rgba_png": lambda im, p: _save(im.convert("RGBA"), p.with_suffix(".png")),
    "palette_png": lambda im, p: _save(im.convert("P"), p.with_suffix(".png")),
    "palette_alpha_gif": lambda im, p: _save(
        im.convert("P"), p.with_suffix(".gif"), transparency=0
    ),
    "grayscale_jpeg": lambda im, p: _save(im.convert("L"), p.with_suffix(".jpeg")),
    "webp": lambda im, p: _save(im, p.with_suffix(".webp")),
    "bmp": lambda im, p: _save(im, p.with_suffix(".bmp")),
    "animated_gif": lambda im, p: _animated(im, p.with_suffix(".gif")),
    "tiff": lambda im, p: _save(im, p.with_suffix(".tiff")),
    "gray_alpha_png": lambda im, p: _save(im.convert("LA"), p.with_suffix(".png")),
    "truncated_jpeg": lambda im, p: _truncated(im, p.with_suffix(".jpg"), "JPEG"),
    "truncated_png": lambda im, p: _truncated(im, p.with_suffix(".png"), "PNG"),
    "corrupt_png": lambda im, p: _corrupt_png(im, p.with_suffix(".png")),
    "empty_jpg": lambda im, p: _write_bytes(p.with_suffix(".jpg"), b""),
    "text_as_jpg": lambda im, p: _write_bytes(p.with_suffix(".jpg"), b"just some notes\n"),
    "html_as_png": lambda im, p: _write_bytes(
        p.with_suffix(".png"), b"<html><body>404</body></html>"
    ),
    "decompression_bomb": lambda im, p: _bomb(im, p.with_suffix(".png")),
}


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


PATCH_CLASSES = ("red_patch", "blue_patch")


def patch_image(
    label: int, size: int = 32, patch: int = 8, seed: int = 0
) -> tuple[np.ndarray, int, int]:
    """Grey noise with one coloured square at a random place; only its colour gives the class.

    Returns the (size, size, 3) uint8 image and the square's top-left corner (row, column),
    so a test can check that an explanation points at the square.
    """
    rng = np.random.default_rng(seed)
    image = rng.normal(128, 30, (size, size, 3)).clip(0, 255)
    row, column = (int(v) for v in rng.integers(0, size - patch + 1, 2))
    image[row : row + patch, column : column + patch] = _COLOURS[0 if label == 0 else 2]
    return image.astype(np.uint8), row, column


def make_patch_folder(
    root: str | Path, per_class: int = 48, size: int = 32, patch: int = 8
) -> Path:
    """A class folder of `patch_image`s: red_patch/ and blue_patch/."""
    root = Path(root)
    for label, name in enumerate(PATCH_CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            image, _, _ = patch_image(label, size, patch, seed=label * 10_000 + index)
            Image.fromarray(image).save(root / name / f"{index:03d}.png")
    return root


# Twenty bad uploads a server must refuse with a 4xx and survive. Each is a set of keyword
# arguments for an httpx-style `post` (httpx.Client, FastAPI's TestClient), so the unit tests
# and the load benchmark (benchmarks/serve_load.py) fire exactly the same requests.
TOO_LARGE_BYTES = 30 * 2**20  # a "30 MB file", three times the server's default limit
_FORM, _BOUNDARY = "multipart/form-data", "torchgraft-boundary"
_FIELD_ONLY_FORM = (
    f'--{_BOUNDARY}\r\nContent-Disposition: form-data; name="note"\r\n\r\nno file here\r\n'
    f"--{_BOUNDARY}--\r\n"
).encode()


@dataclass(frozen=True)
class BadUpload:
    name: str  # what is wrong with it
    statuses: tuple[int, ...]  # the acceptable answers
    request: dict[str, Any] = field(repr=False)  # keyword arguments for client.post


def encoded_image(format_name: str, size: int = 64) -> bytes:
    """A real image file in memory (JPEG, PNG, ...), to upload or to break in various ways."""
    buffer = io.BytesIO()
    Image.fromarray(class_image(0, size, seed=5)).save(buffer, format=format_name)
    return buffer.getvalue()


def bad_uploads() -> list[BadUpload]:
    """The twenty bad uploads, each with the HTTP statuses a server may answer it with."""
    jpeg, png = encoded_image("JPEG"), encoded_image("PNG")
    corrupt_png = png[:60] + bytes(20) + png[80:]  # zeroed image data: the CRC check fails
    bomb = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(bomb, format="PNG")  # ~100 megapixels in ~15 KB
    huge = b"\xff\xd8\xff\xe0" + bytes(TOO_LARGE_BYTES)
    text = b"just some notes, not an image\n"
    return [
        _raw("empty body", b"", "image/jpeg", 400),
        _form("empty file", b"", "image/png", 400),
        _raw("text as text/plain", text, "text/plain", 415),
        _raw("text declared as a JPEG", text, "image/jpeg", 400),
        _form("text file in a form", text, "text/plain", 415),
        _raw("truncated JPEG", jpeg[: len(jpeg) // 2], "image/jpeg", 400),
        _form("truncated JPEG in a form", jpeg[: len(jpeg) // 3], "image/jpeg", 400),
        _raw("truncated PNG", png[: len(png) // 2], "image/png", 400),
        _raw("corrupt PNG", corrupt_png, "image/png", 400),
        _raw("30 MB body", huge, "image/jpeg", 413),
        _form("30 MB file in a form", huge, "image/jpeg", 413),
        _raw("decompression bomb", bomb.getvalue(), "image/png", 413),
        _raw("JSON content type", b'{"image": "x"}', "application/json", 415),
        _raw("HTML declared as a PNG", b"<html><body>404</body></html>", "image/png", 400),
        _raw("form-encoded body (curl's default)", jpeg, "application/x-www-form-urlencoded", 415),
        _raw(
            "SVG (not decodable)",
            b"<svg xmlns='http://www.w3.org/2000/svg'/>",
            "image/svg+xml",
            415,
        ),
        _raw("random bytes", bytes(range(256)) * 8, "application/octet-stream", 400),
        _raw("form without a file", _FIELD_ONLY_FORM, f"{_FORM}; boundary={_BOUNDARY}", 400),
        _raw("form without a boundary", b"--x\r\n\r\n", _FORM, 400),
        BadUpload(
            "two files in one form",
            (400,),
            {
                "files": [
                    ("file", ("a.png", png, "image/png")),
                    ("file", ("b.png", png, "image/png")),
                ]
            },
        ),
    ]


def _raw(name: str, body: bytes, content_type: str, *statuses: int) -> BadUpload:
    return BadUpload(name, statuses, {"content": body, "headers": {"content-type": content_type}})


def _form(name: str, body: bytes, content_type: str, *statuses: int) -> BadUpload:
    return BadUpload(name, statuses, {"files": {"file": ("upload.bin", body, content_type)}})

"""A seeded fuzz corpus: thousands of broken, odd and foreign image files in class folders.

Every command that reads images (doctor, train, predict, serve) must get through this folder
with no traceback, using each file or listing it with a reason. The files come from small
valid files of each allowed format (JPEG, PNG, WebP, BMP, GIF, TIFF, in several modes and
encodings) and of formats torchgraft does not decode by default (EPS, DDS, BLP, ICO, PSD,
PPM, ...), mutated by bit flips, truncations, garbled header bytes, declared sizes rewritten
to extremes, and names whose extension lies about the content; plus valid images of extreme
shapes (1xN, Nx1) and enough clean images per class that training has something to learn.

The corpus is a test helper, not part of the package: it lives under tests/ next to the
tests that use it (tests/e2e/test_fuzz_corpus.py, tests/unit/data/test_decode.py). The same
seed gives the same bytes (with one Pillow version), and writing it takes about a second.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from torchgraft.data.decode import DEFAULT_FORMATS
from torchgraft.testing import class_image

CLASSES = ("circle", "square", "triangle")
# The extension each format's files carry here, for every format decoded by default.
EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "GIF": ".gif",
              "TIFF": ".tiff"}  # fmt: skip
ALLOWED_EXTENSIONS = tuple(EXTENSIONS[name] for name in DEFAULT_FORMATS)
# Declared (width, height) pairs a header is rewritten to: over the pixel limit, too thin,
# empty, and a 12-megapixel phone photo's size (decoded in full from a 1 KB file, 0.2 s each).
EXTREME_SIZES = ((65535, 65535), (65535, 1), (1, 65535), (0, 0), (4000, 3000), (3, 40000))
THIN_LENGTHS = (2, 50, 51, 1000, 100_000)  # 1xN and Nx1 valid images


@dataclass(frozen=True)
class CorpusFile:
    path: Path
    kind: str  # clean, valid, bitflip, truncated, header, declared_size, renamed, thin, foreign
    base: str  # the valid file it was made from


# ---------------------------------------------------------------------------- base files


def _encode(image: Image.Image, format_name: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    # A copy: Pillow leaves one save's encoder settings on the image, and the next save
    # (a multi-page TIFF after a JPEG-compressed one) would trip over them.
    if "append_images" in options:
        options["append_images"] = [frame.copy() for frame in options["append_images"]]
    image.copy().save(buffer, format=format_name, **options)
    return buffer.getvalue()


def allowed_bases(size: int = 24) -> dict[str, tuple[str, bytes]]:
    """{name: (extension, bytes)}: small valid files of every allowed format, in the modes and
    encodings real collections hold."""
    rgb = Image.fromarray(class_image(0, size, seed=7))
    inverse = Image.fromarray(255 - class_image(0, size, seed=7))
    gray16 = Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
    frames: dict[str, Any] = {"save_all": True, "append_images": [inverse]}
    tiff = "TIFF"
    return {
        "jpeg_rgb": (".jpg", _encode(rgb, "JPEG", quality=90)),
        "jpeg_gray": (".jpg", _encode(rgb.convert("L"), "JPEG")),
        "jpeg_cmyk": (".jpg", _encode(rgb.convert("CMYK"), "JPEG")),
        "jpeg_progressive": (".jpg", _encode(rgb, "JPEG", progressive=True)),
        "mpo": (".jpg", _encode(rgb, "MPO", **frames)),
        "png_rgb": (".png", _encode(rgb, "PNG")),
        "png_rgba": (".png", _encode(rgb.convert("RGBA"), "PNG")),
        "png_palette": (".png", _encode(rgb.convert("P"), "PNG")),
        "png_gray16": (".png", _encode(gray16, "PNG")),
        "apng": (".png", _encode(rgb, "PNG", **frames)),
        "webp_lossy": (".webp", _encode(rgb, "WEBP", quality=80)),
        "webp_lossless": (".webp", _encode(rgb, "WEBP", lossless=True)),
        "webp_animated": (".webp", _encode(rgb, "WEBP", **frames)),
        "bmp_rgb": (".bmp", _encode(rgb, "BMP")),
        "bmp_palette": (".bmp", _encode(rgb.convert("P"), "BMP")),
        "bmp_1bit": (".bmp", _encode(rgb.convert("1"), "BMP")),
        "gif": (".gif", _encode(rgb.convert("P"), "GIF")),
        "gif_animated": (".gif", _encode(rgb.convert("P"), "GIF", **frames)),
        "tiff_raw": (".tiff", _encode(rgb, tiff)),
        "tiff_lzw": (".tiff", _encode(rgb, tiff, compression="tiff_lzw")),
        "tiff_jpeg": (".tiff", _encode(rgb, tiff, compression="jpeg")),
        "tiff_deflate": (".tiff", _encode(rgb, tiff, compression="tiff_adobe_deflate")),
        "tiff_multipage": (".tiff", _encode(rgb, tiff, **frames)),
        "tiff_gray16": (".tiff", _encode(gray16, tiff)),
        "tiff_cmyk": (".tiff", _encode(rgb.convert("CMYK"), tiff)),
        "tiff_lab": (".tiff", _encode(Image.merge("LAB", rgb.split()), tiff)),
    }


def foreign_bases(size: int = 24) -> dict[str, bytes]:
    """{format: bytes}: valid files of formats outside the allow-list (and non-images)."""
    rgb = Image.fromarray(class_image(1, size, seed=8))
    encoders: dict[str, Callable[[], bytes]] = {
        "EPS": lambda: _encode(rgb, "EPS"),
        "DDS": lambda: _encode(rgb, "DDS"),
        "BLP": lambda: _encode(rgb.convert("P"), "BLP"),
        "ICO": lambda: _encode(rgb, "ICO"),
        "PPM": lambda: _encode(rgb, "PPM"),
        "PCX": lambda: _encode(rgb, "PCX"),
        "SGI": lambda: _encode(rgb, "SGI"),
        "TGA": lambda: _encode(rgb, "TGA"),
        "QOI": lambda: _encode(rgb, "QOI"),
        "MSP": lambda: _encode(rgb.convert("1"), "MSP"),
        "XBM": lambda: _encode(rgb.convert("1"), "XBM"),
        "SPIDER": lambda: _encode(rgb.convert("F"), "SPIDER"),
        "JPEG2000": lambda: _encode(rgb, "JPEG2000"),
        "AVIF": lambda: _encode(rgb, "AVIF"),
        # Pillow's PDF writer stamps the time; a fixed file keeps the corpus reproducible.
        "PDF": lambda: b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n",
        "PSD": lambda: psd_bytes(np.asarray(rgb)),
        "SVG": lambda: b"<svg xmlns='http://www.w3.org/2000/svg' width='9' height='9'/>",
        "HTML": lambda: b"<!doctype html><html><body>404 not found</body></html>",
    }
    return {name: encode() for name, encode in encoders.items()}


def psd_bytes(pixels: np.ndarray) -> bytes:
    """A minimal Photoshop file (raw RGB, no layers), which Pillow cannot write."""
    height, width, channels = pixels.shape
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, channels, height, width, 8, 3)
    sections = struct.pack(">III", 0, 0, 0)  # colour mode data, image resources, layers
    planes = np.ascontiguousarray(pixels.transpose(2, 0, 1)).tobytes()
    return header + sections + struct.pack(">H", 0) + planes


# ---------------------------------------------------------------------------- mutations


def flip_bits(data: bytes, count: int, rng: np.random.Generator, within: int = 0) -> bytes:
    """`count` random bits flipped, anywhere or (with `within`) in the first bytes."""
    mutated = bytearray(data)
    span = min(within, len(data)) if within else len(data)
    for position in rng.integers(0, span * 8, count):
        mutated[position // 8] ^= 1 << (position % 8)
    return bytes(mutated)


def garble_header(data: bytes, rng: np.random.Generator) -> bytes:
    """A run of 1 to 8 bytes in the first 64 overwritten with zeros, 0xFF or random bytes."""
    mutated = bytearray(data)
    length = int(rng.integers(1, 9))
    start = int(rng.integers(0, max(1, min(64, len(data)) - length)))
    fill = int(rng.integers(0, 3))
    run = [bytes(length), b"\xff" * length, rng.bytes(length)][fill]
    mutated[start : start + length] = run
    return bytes(mutated[: len(data)])


def with_declared_size(data: bytes, extension: str, width: int, height: int) -> bytes:
    """The file with the width and height in its header rewritten (checksums kept valid)."""
    patch = _SIZE_PATCHERS[extension]
    return patch(bytearray(data), width, height)


def _png_size(data: bytearray, width: int, height: int) -> bytes:
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # IHDR's CRC
    return bytes(data)


def _bmp_size(data: bytearray, width: int, height: int) -> bytes:
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def _gif_size(data: bytearray, width: int, height: int) -> bytes:
    data[6:10] = struct.pack("<HH", width, height)  # the logical screen
    flags = data[10]
    descriptor = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
    while data[descriptor] == 0x21:  # skip extension blocks up to the first image
        descriptor += 2
        while data[descriptor]:
            descriptor += data[descriptor] + 1
        descriptor += 1
    data[descriptor + 5 : descriptor + 9] = struct.pack("<HH", width, height)
    return bytes(data)


def _jpeg_size(data: bytearray, width: int, height: int) -> bytes:
    position = 2
    while position + 4 <= len(data):
        marker, length = data[position + 1], struct.unpack(">H", data[position + 2 : position + 4])
        if marker in (0xC0, 0xC1, 0xC2):  # start of frame: precision, height, width
            data[position + 5 : position + 9] = struct.pack(">HH", height, width)
            break
        position += 2 + length[0]
    return bytes(data)


def _tiff_size(data: bytearray, width: int, height: int) -> bytes:
    order = "<" if data[:2] == b"II" else ">"
    (offset,) = struct.unpack(order + "I", data[4:8])
    (entries,) = struct.unpack(order + "H", data[offset : offset + 2])
    for index in range(entries):
        entry = offset + 2 + 12 * index
        (tag,) = struct.unpack(order + "H", data[entry : entry + 2])
        if tag in (256, 257):  # ImageWidth, ImageLength, rewritten as LONG values
            value = width if tag == 256 else height
            data[entry + 2 : entry + 12] = struct.pack(order + "HII", 4, 1, value)
    return bytes(data)


def _webp_size(data: bytearray, width: int, height: int) -> bytes:
    chunk = bytes(data[12:16])
    width, height = max(width, 1), max(height, 1)
    if chunk == b"VP8X":  # canvas size minus one, 24 bits each
        data[24:30] = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    elif chunk == b"VP8L":  # 14 bits each, minus one, after the signature byte
        bits = int.from_bytes(data[21:25], "little") & ~((1 << 28) - 1)
        bits |= ((width - 1) & 0x3FFF) | (((height - 1) & 0x3FFF) << 14)
        data[21:25] = bits.to_bytes(4, "little")
    else:  # "VP8 ": 14-bit sizes after the frame tag and start code
        data[26:30] = struct.pack("<HH", width & 0x3FFF, height & 0x3FFF)
    return bytes(data)


_SIZE_PATCHERS: dict[str, Callable[[bytearray, int, int], bytes]] = {
    ".png": _png_size, ".bmp": _bmp_size, ".gif": _gif_size, ".jpg": _jpeg_size,
    ".tiff": _tiff_size, ".webp": _webp_size,
}  # fmt: skip


def thin_images() -> dict[str, tuple[str, bytes]]:
    """Valid images of extreme shapes: 1xN and Nx1, as PNG, GIF and TIFF (compact for any N),
    and 1x1 in every allowed format."""
    files: dict[str, tuple[str, bytes]] = {}
    for length in THIN_LENGTHS:
        for name, size in (("wide", (length, 1)), ("tall", (1, length))):
            strip = Image.new("RGB", size, (230, 40, 40))
            files[f"png_{name}_{length}"] = (".png", _encode(strip, "PNG"))
            if length <= 65535:  # GIF stores sides in 16 bits
                files[f"gif_{name}_{length}"] = (".gif", _encode(strip.convert("P"), "GIF"))
            files[f"tiff_{name}_{length}"] = (
                ".tiff",
                _encode(strip, "TIFF", compression="tiff_lzw"),
            )
    dot = Image.new("RGB", (1, 1), (40, 40, 230))
    for format_name in DEFAULT_FORMATS:
        files[f"{format_name.lower()}_1x1"] = (EXTENSIONS[format_name], _encode(dot, format_name))
    return files


# ---------------------------------------------------------------------------- the corpus


def mutants(
    name: str, extension: str, data: bytes, rng: np.random.Generator, per_base: int
) -> list[tuple[str, str, str, bytes]]:
    """(kind, base, extension, bytes) for one valid allowed-format file: `per_base` bit-flip
    variants, half as many truncations and garbled headers, every extreme declared size, and
    the file under each other allowed extension."""
    made: list[tuple[str, str, str, bytes]] = [("valid", name, extension, data)]
    for index in range(per_base):
        count = (1, 2, 8, 32)[index % 4]
        within = 64 if index % 3 == 0 else 0  # a third aim at the header
        made.append(("bitflip", name, extension, flip_bits(data, count, rng, within)))
    cuts = sorted({1, 4, 12, 16, len(data) // 2, len(data) - 1} | set(_cuts(data, rng, per_base)))
    made.extend(("truncated", name, extension, data[:cut]) for cut in cuts)
    made.extend(("header", name, extension, garble_header(data, rng)) for _ in range(per_base // 2))
    for width, height in EXTREME_SIZES:
        sized = with_declared_size(data, extension, width, height)
        made.append(("declared_size", name, extension, sized))
    others = [other for other in ALLOWED_EXTENSIONS if other != extension]
    made.extend(("renamed", name, other, data) for other in others[:2])
    made.append(("trailing_garbage", name, extension, data + rng.bytes(64)))
    return made


def _cuts(data: bytes, rng: np.random.Generator, per_base: int) -> list[int]:
    return [int(cut) for cut in rng.integers(1, len(data), per_base // 2)]


def foreign_mutants(
    name: str, data: bytes, rng: np.random.Generator
) -> list[tuple[str, str, str, bytes]]:
    """A foreign file under three allowed extensions, plus a few bit flips and truncations."""
    made = [("foreign", name, extension, data) for extension in (".jpg", ".png", ".tiff")]
    made.extend(("foreign_bitflip", name, ".jpg", flip_bits(data, 4, rng)) for _ in range(4))
    made.extend(("foreign_truncated", name, ".png", data[:cut]) for cut in _cuts(data, rng, 6))
    return made


def make_fuzz_corpus(
    root: str | Path, seed: int = 0, per_base: int = 50, clean_per_class: int = 40
) -> list[CorpusFile]:
    """Write the corpus under root/<class>/ and return every file written, in order.

    With the defaults: about 3,400 files, 40 clean images per class among them.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    for name in CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
    entries = _clean_images(clean_per_class)
    for name, (extension, data) in allowed_bases().items():
        entries.extend(mutants(name, extension, data, rng, per_base))
    for name, data in foreign_bases().items():
        entries.extend(foreign_mutants(name, data, rng))
    entries.extend(("thin", name, ext, data) for name, (ext, data) in thin_images().items())
    written: list[CorpusFile] = []
    for index, (kind, base, extension, data) in enumerate(entries):
        label = index % len(CLASSES) if kind != "clean" else int(base.split("_")[1])
        path = root / CLASSES[label] / f"{index:05d}_{kind}_{base}{extension}"
        path.write_bytes(data)
        written.append(CorpusFile(path, kind, base))
    return written


def _clean_images(per_class: int) -> list[tuple[str, str, str, bytes]]:
    """Valid images whose colour and stripes give their class, so training can learn."""
    made: list[tuple[str, str, str, bytes]] = []
    for label in range(len(CLASSES)):
        for index in range(per_class):
            image = Image.fromarray(class_image(label, 24, seed=label * 1000 + index))
            extension, format_name = (".png", "PNG") if index % 2 else (".jpg", "JPEG")
            made.append(("clean", f"class_{label}", extension, _encode(image, format_name)))
    return made

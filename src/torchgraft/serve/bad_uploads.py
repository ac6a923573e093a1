"""Twenty bad uploads a server must refuse with a 4xx and survive: for tests and benchmarks.

Each is a set of keyword arguments for an httpx-style `post` (httpx.Client, FastAPI's
TestClient), so the unit tests and the load benchmark fire exactly the same requests.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from torchgraft.testing import class_image

TOO_LARGE_BYTES = 30 * 2**20  # the "30 MB file", three times the default limit
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


def encoded(format_name: str, size: int = 64) -> bytes:
    """A real image file in memory (JPEG, PNG, ...), to break in various ways."""
    buffer = io.BytesIO()
    Image.fromarray(class_image(0, size, seed=5)).save(buffer, format=format_name)
    return buffer.getvalue()


def bad_uploads() -> list[BadUpload]:
    jpeg, png = encoded("JPEG"), encoded("PNG")
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
        _raw("decompression bomb", bomb.getvalue(), "image/png", 400, 413),
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

"""Reading an uploaded image safely: a multipart form or the raw bytes as the request body.

The size limit is enforced while the body streams in (and up front from Content-Length), so
a 30 MB body is refused with 413 after at most the limit has been read, never held whole.
Types that cannot be images are refused with 415 before anything is decoded.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

from fastapi import HTTPException, Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

# What browsers and HTTP clients send for the formats the decoder reads; octet-stream (or no
# type at all) means "bytes, find out what they are", which the decoder does by content.
IMAGE_TYPES = frozenset(
    {
        "image/jpeg", "image/pjpeg", "image/png", "image/gif", "image/webp", "image/bmp",
        "image/x-bmp", "image/x-ms-bmp", "image/tiff", "application/octet-stream",
    }
)  # fmt: skip
_FORM_TYPE = "multipart/form-data"


@dataclass
class Upload:
    data: bytes
    name: str  # the uploaded file's name, or "upload" for a raw body


async def read_upload(request: Request, max_bytes: int) -> Upload:
    """The image a POST carries, or an HTTPException (400, 413, 415) saying what was wrong."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != _FORM_TYPE:
        check_type(media_type or "application/octet-stream", "the request body")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large(max_bytes)
    body = limited(request.stream(), max_bytes)
    if media_type == _FORM_TYPE:
        return await _read_form(request, body)
    return Upload(b"".join([chunk async for chunk in body]), "upload")


def check_type(media_type: str, what: str) -> None:
    if media_type.lower() not in IMAGE_TYPES:
        raise HTTPException(
            415,
            f"{what} has content type {media_type!r}, which is not an image: send JPEG, PNG, "
            "GIF, WebP, BMP or TIFF (multipart form field, or raw bytes with Content-Type "
            "image/jpeg etc.)",
        )


def too_large(max_bytes: int) -> HTTPException:
    return HTTPException(413, f"upload larger than the limit of {max_bytes / 2**20:.1f} MB")


async def limited(stream: AsyncIterator[bytes], max_bytes: int) -> AsyncGenerator[bytes, None]:
    """The body's chunks, refusing with 413 as soon as more than `max_bytes` have arrived."""
    received = 0
    async for chunk in stream:
        received += len(chunk)
        if received > max_bytes:
            raise too_large(max_bytes)
        yield chunk


async def _read_form(request: Request, body: AsyncGenerator[bytes, None]) -> Upload:
    """The first file field of a multipart form (a browser's FormData, curl -F file=@x.jpg)."""
    parser = MultiPartParser(request.headers, body, max_files=1, max_fields=16)
    try:
        form = await parser.parse()
    except MultiPartException as error:
        raise HTTPException(400, f"malformed multipart form: {error.message}") from None
    try:
        files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
        if not files:
            raise HTTPException(
                400, "the form holds no file: send the image as a file field (curl -F file=@x.jpg)"
            )
        name = files[0].filename or "upload"
        check_type(files[0].content_type or "application/octet-stream", name)
        return Upload(await files[0].read(), name)
    finally:
        await form.close()

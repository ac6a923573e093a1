"""Fingerprints of images: exact (a digest of the bytes) and perceptual (a difference hash).

`content_digest` says whether two files hold the same bytes. `perceptual_hash` is a 64-bit
difference hash (dHash): the image in grayscale, shrunk to 9x8 with antialiasing, one bit per
pair of horizontally adjacent pixels (is the right one brighter?). Re-encoding, resizing or a
little noise flips few bits; a different picture flips about half of them. Hashes are compared
by Hamming distance, many at once with `near_duplicate_pairs`.

A 64-bit hash is coarse on small, plain images (two different handwritten 1s often share it),
so each candidate pair is confirmed on a `thumbnail`: 16x16 grayscale, normalised so that
brightness and contrast do not count. Measured: re-encoded, brightened, resized or noised
copies differ by at most 0.021 (mean absolute difference); distinct mnist5k digits whose
hashes collide differ by at least 0.037. `THUMBNAIL_TOLERANCE` sits between.

`fingerprint_files` digests, decodes and hashes many files in worker processes, a chunk of
files per round trip, through the decoder training uses and with the channels it uses, so
both agree on which files are unreadable; `fingerprint_arrays` does the same for in-memory
images, batched. Each fingerprint also records the spread of the pixel values, which tells
blank or constant images apart.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from torchgraft.data.decode import UnreadableImage, decode_file, match_channels

CHUNK_BYTES = 1 << 20  # read files a megabyte at a time
HASH_BITS = 64
_HASH_SHAPE = (8, 9)  # rows, columns: 8 differences per row, 8 rows
_PAIR_BUDGET = 1 << 22  # hash comparisons held in memory at once (32 MiB of uint64)
_ARRAY_BATCH = 1024  # in-memory images hashed per tensor operation
_MAX_CHUNK = 256  # files per round trip to a worker process
_THUMBNAIL_SIDE = 16
THUMBNAIL_TOLERANCE = 0.03  # mean absolute difference of normalised thumbnails
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 weights, as `match_channels` and PIL use

Progress = Callable[[int], None]  # told how many more images are done


@dataclass(frozen=True)
class Fingerprint:
    """What decoding and hashing one image found (small, so cheap to send between processes)."""

    digest: str  # sha256 of the file's bytes (of the pixels for in-memory images)
    phash: int = 0  # 64-bit difference hash
    width: int = 0  # original size and Pillow mode, before any conversion
    height: int = 0
    mode: str = ""
    reason: str | None = None  # why the file cannot be used as an image; None when it can
    thumbnail: bytes = b""  # 16x16 normalised grayscale, float16, to confirm near duplicates
    spread: float = 0.0  # largest per-channel standard deviation, grey levels (0: constant)


def content_digest(path: Path, chunk_bytes: int = CHUNK_BYTES) -> str:
    """The sha256 of a file's bytes (hex), read in chunks so large files stay out of memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def array_digest(array: np.ndarray) -> str:
    """The sha256 of an in-memory image's pixels, shape and dtype (hex)."""
    digest = hashlib.sha256(f"{array.shape}{array.dtype}".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def perceptual_hash(image: torch.Tensor) -> int:
    """The 64-bit difference hash of a (C, H, W) uint8 image, as a Python int."""
    if image.ndim != 3:
        raise ValueError(f"expected a (C, H, W) image, got shape {tuple(image.shape)}")
    return int(perceptual_hashes(image.unsqueeze(0))[0])


def perceptual_hashes(images: torch.Tensor) -> np.ndarray:
    """Difference hashes of a batch of same-sized (N, C, H, W) uint8 images, as uint64."""
    _check_batch(images)
    return _hashes_of_gray(_grayscale(images))


def thumbnails(images: torch.Tensor) -> np.ndarray:
    """(N, 256) float16 thumbnails of (N, C, H, W) uint8 images: zero mean, unit deviation."""
    _check_batch(images)
    return _thumbnails_of_gray(_grayscale(images))


def _check_batch(images: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] not in (1, 3, 4):
        raise ValueError(f"expected (N, 1|3|4, H, W) images, got shape {tuple(images.shape)}")


def _hashes_of_gray(gray: torch.Tensor) -> np.ndarray:
    small = F.interpolate(
        gray, size=_HASH_SHAPE, mode="bilinear", antialias=True, align_corners=False
    )[:, 0]
    bits = (small[:, :, 1:] > small[:, :, :-1]).reshape(len(gray), HASH_BITS).numpy()
    packed = np.packbits(bits, axis=1)  # 8 bytes per image, most significant bit first
    return packed.view(">u8").astype(np.uint64).reshape(-1)


def _thumbnails_of_gray(gray: torch.Tensor) -> np.ndarray:
    small = F.interpolate(
        gray, size=(_THUMBNAIL_SIDE,) * 2, mode="bilinear", antialias=True
    ).reshape(len(gray), -1)
    centred = small - small.mean(1, keepdim=True)
    return (centred / (centred.std(1, keepdim=True) + 1e-6)).numpy().astype(np.float16)


def pixel_spreads(images: torch.Tensor) -> np.ndarray:
    """Per image of (N, C, H, W) uint8 images, the largest standard deviation of a channel,
    in grey levels: 0 for an image whose pixels are all equal.

    From each channel's histogram of the 256 levels (a bincount reads the uint8 pixels as they
    are), so an 89-megapixel image costs no float copy of its pixels."""
    levels = torch.arange(256, dtype=torch.float64)
    spreads = np.zeros(len(images))
    for index, image in enumerate(images):
        for channel in image:
            counts = torch.bincount(channel.reshape(-1), minlength=256).double()
            mean = (counts * levels).sum() / counts.sum()
            variance = (counts * (levels - mean) ** 2).sum() / counts.sum()
            spreads[index] = max(spreads[index], float(variance.sqrt()))
    return spreads


def thumbnail_distance(first: bytes, second: bytes) -> float:
    """Mean absolute difference of two thumbnails (0 for the same picture)."""
    a = np.frombuffer(first, dtype=np.float16).astype(np.float32)
    b = np.frombuffer(second, dtype=np.float16).astype(np.float32)
    return float(np.abs(a - b).mean())


def _grayscale(images: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) float luma of uint8 images, with `match_channels`'s rules for RGB(A).

    Built one weighted channel at a time into a single float plane: multiplying all three
    channels as floats first took four times the memory (2.5 GB per worker at 89 megapixels,
    with the hashes and thumbnails each making their own)."""
    if images.shape[1] == 1:
        return images.float()
    if images.shape[1] == 4:
        images = torch.stack([match_channels(image, 3) for image in images])
    red, green, blue = images[:, 0:1], images[:, 1:2], images[:, 2:3]
    gray = red.float().mul_(_LUMA[0])
    gray.add_(green, alpha=_LUMA[1])  # the uint8 channel is read as float as it goes, no copy
    return gray.add_(blue, alpha=_LUMA[2])


def hamming_distance(first: int, second: int) -> int:
    """How many of the 64 bits differ between two hashes."""
    return (int(first) ^ int(second)).bit_count()


def near_duplicate_pairs(hashes: np.ndarray, max_distance: int) -> list[tuple[int, int]]:
    """Index pairs (i < j) whose hashes differ in at most `max_distance` bits.

    Compares every pair with numpy (XOR, then a popcount), a block of rows at a time so memory
    stays bounded for tens of thousands of hashes. Pairs of identical files are included;
    leaving them out is the caller's job.
    """
    hashes = np.asarray(hashes, dtype=np.uint64).reshape(-1)
    count = len(hashes)
    rows_per_block = max(1, _PAIR_BUDGET // max(count, 1))
    pairs: list[tuple[int, int]] = []
    for start in range(0, count, rows_per_block):
        stop = min(start + rows_per_block, count)
        distances = np.bitwise_count(hashes[start:stop, None] ^ hashes[None, :])
        rows, columns = np.nonzero(distances <= max_distance)
        rows += start
        keep = columns > rows  # each pair once, never an image with itself
        pairs.extend(zip(rows[keep].tolist(), columns[keep].tolist(), strict=True))
    return pairs


def fingerprint_files(
    paths: Sequence[Path], workers: int, progress: Progress | None = None, channels: int = 3
) -> list[Fingerprint]:
    """Fingerprints of `paths`, in order, from `workers` processes (0: in this process),
    decoded to `channels` (1 or 3) as training decodes them."""
    processes = min(workers, os.cpu_count() or 1)
    size = max(1, min(_MAX_CHUNK, len(paths) // max(4 * processes, 1)))
    chunks = [paths[start : start + size] for start in range(0, len(paths), size)]
    fingerprints: list[Fingerprint] = []
    for done in _map_chunks(partial(fingerprint_chunk, channels=channels), chunks, processes):
        fingerprints.extend(done)
        if progress is not None:
            progress(len(done))
    return fingerprints


ChunkWork = Callable[[Sequence[Path]], list[Fingerprint]]


def _map_chunks(
    work: ChunkWork, chunks: list[Sequence[Path]], processes: int
) -> Iterator[list[Fingerprint]]:
    if processes == 0 or len(chunks) <= 1:
        yield from map(work, chunks)
        return
    with ProcessPoolExecutor(min(processes, len(chunks)), initializer=_one_thread) as pool:
        yield from pool.map(work, chunks)


def _one_thread() -> None:
    torch.set_num_threads(1)  # the worker processes are the parallelism


def fingerprint_chunk(paths: Sequence[Path], channels: int = 3) -> list[Fingerprint]:
    """Fingerprints of a few files (what one worker does per round trip)."""
    return [fingerprint_file(path, channels) for path in paths]


def fingerprint_file(path: Path, channels: int = 3) -> Fingerprint:
    """Decode, digest and hash one file; an unreadable one gets a reason instead.

    Decoding comes first and goes through `decode_file`, as in training, so a file doctor
    calls unreadable is one training skips, with the same reason.
    """
    try:
        image, info = decode_file(path, channels)
        digest = content_digest(path)
    except UnreadableImage as error:
        return Fingerprint("", reason=error.reason)
    except OSError as error:  # gone or unreadable between decoding and digesting
        return Fingerprint("", reason=f"cannot open ({error.strerror or error})")
    batch = image.unsqueeze(0)
    gray = _grayscale(batch)  # once, for both the hash and the thumbnail
    return Fingerprint(
        digest,
        int(_hashes_of_gray(gray)[0]),
        info.width,
        info.height,
        info.mode,
        thumbnail=_thumbnails_of_gray(gray)[0].tobytes(),
        spread=float(pixel_spreads(batch)[0]),
    )


def fingerprint_arrays(images: np.ndarray, progress: Progress | None = None) -> list[Fingerprint]:
    """Fingerprints of in-memory uint8 images, (N, H, W) or (N, H, W, C), hashed in batches."""
    fingerprints: list[Fingerprint] = []
    for start in range(0, len(images), _ARRAY_BATCH):
        batch = np.array(images[start : start + _ARRAY_BATCH])  # a writable copy
        tensor = torch.from_numpy(batch)
        tensor = tensor.unsqueeze(1) if batch.ndim == 3 else tensor.permute(0, 3, 1, 2)
        mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(tensor.shape[1], "?")
        height, width = batch.shape[1:3]
        hashes = perceptual_hashes(tensor).tolist()
        small = thumbnails(tensor)
        spreads = pixel_spreads(tensor).tolist()
        for image, phash, thumbnail, spread in zip(batch, hashes, small, spreads, strict=True):
            fingerprints.append(
                Fingerprint(
                    array_digest(image),
                    phash,
                    width,
                    height,
                    mode,
                    thumbnail=thumbnail.tobytes(),
                    spread=spread,
                )
            )
        if progress is not None:
            progress(len(batch))
    return fingerprints

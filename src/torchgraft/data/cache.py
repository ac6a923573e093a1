"""The decoded-image cache: every image is decoded and resized once, then reused.

Decoding a JPEG costs far more than a training step needs to spend on it. Here each image is
decoded, made upright, converted and resized to the training resolution once, and kept as
uint8 rows of one (N, C, S, S) array: in memory, or memory-mapped from disk where it is
keyed by the files' contents and the preprocessing, so later runs skip decoding too. The
same pass finds the files that cannot be decoded: they are skipped and reported, never fatal.

Sizes are checked before anything is allocated: a memory cache larger than half the
available RAM is refused with a message that names `--cache disk`. The disk cache is written
row by row through a memory map whose pages are released as they fill, so a dataset larger
than RAM never has to fit in it; without room on disk, images are decoded on the fly.
Files are digested through a manifest (`data.manifest`): unchanged files are not read again.

A disk entry heals: its index records the pixel file's size, inode and mtime and a CRC-32 of
its rows, computed while they are written. A read checks the size, the .npy header and shape,
and the inode and mtime (a rename keeps both; anything that rewrites the file changes one):
only when those differ are the rows read and their CRC compared, so a warm start costs no
pass over gigabytes of pixels, and a truncated, overwritten or corrupt entry is rebuilt with
one warning instead of crashing the run. Files are renamed into place whole (`data.cache_files`,
which also removes a killed run's temporaries and keeps the cache under its size cap).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import mmap
import os
import shutil
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from torchgraft.artifact import Preprocessing
from torchgraft.config import CACHE_MODES
from torchgraft.data.cache_files import cache_write, enforce_limit, mark_used, read_or_none, tidy
from torchgraft.data.decode import (
    UnreadableImage,
    allowed_formats,
    array_to_tensor,
    decode_file,
)
from torchgraft.data.manifest import manifest_for
from torchgraft.data.sources import LabeledImages, printable
from torchgraft.data.transforms import eval_transform
from torchgraft.errors import UserError
from torchgraft.progress import progress

logger = logging.getLogger(__name__)

__all__ = ["CACHE_MODES", "DecodedSplit", "Skipped", "decode_split"]

CACHE_FORMAT = 3  # bump when the stored entries would differ for the same key
_BATCH = 32  # images per worker round trip while decoding
MEMORY_SHARE = 0.5  # a memory cache may take at most this share of the available RAM
DISK_MARGIN = 1 << 30  # free disk space left over after a disk cache is written
RELEASE_BYTES = 256 << 20  # written cache pages dropped from memory this often
CHECK_PIECE = 16 << 20  # bytes read at a time to verify an entry's checksum
BEING_INDEXED = 60.0  # seconds: a pixel file this new without its index has a writer at work


@dataclass(frozen=True)
class Skipped:
    """A file left out of training, and why."""

    path: str
    reason: str


@dataclass
class DecodedSplit:
    """The outcome of one decoding pass over a split."""

    kept: np.ndarray  # indices (into the split) of the images that decoded
    skipped: list[Skipped] = field(default_factory=list)
    pixels: np.ndarray | None = None  # (len(kept), C, S, S) uint8; None when not cached
    key: str = ""  # hash of the images' contents and the preprocessing (names cache entries)


def default_cache_dir() -> Path:
    return Path(os.environ.get("TORCHGRAFT_CACHE", Path.home() / ".cache" / "torchgraft"))


def cache_root(configured: str | None) -> Path:
    """The cache folder a config names (`data.cache_dir`), else the default one."""
    return Path(configured).expanduser() if configured else default_cache_dir()


def decode_split(
    images: LabeledImages,
    preprocessing: Preprocessing,
    *,
    mode: str = "memory",
    cache_dir: Path | None = None,
    workers: int = 0,
    description: str = "decoding",
    quiet: bool = False,
) -> DecodedSplit:
    """Decode and resize every image of a split once (or load that work from the disk cache).

    mode "memory" keeps the pixels in RAM, "disk" memory-maps them from `cache_dir` and
    reuses them across runs, "none" only checks which images decode (pixels are not kept).
    """
    cache_dir = cache_dir or default_cache_dir()
    tidy(cache_dir)  # temporaries a killed run left behind
    key = cache_key(images, preprocessing, cache_dir)
    shape = _rows_shape(len(images), preprocessing)
    if mode == "memory":
        _check_memory(shape, description)
    if mode != "disk":
        rows = np.empty(shape, np.uint8) if mode == "memory" else None
        decoded = _decode_all(images, preprocessing, rows, workers, description, quiet)
        decoded.key = key
        return decoded
    folder = cache_dir / "images"
    cached = _read_cached(folder, key, images, shape)
    if cached is not None:
        logger.info("decoded-image cache hit: %s (%d images)", folder / key, len(cached.kept))
        return cached
    if not _room_on_disk(folder, shape):
        decoded = _decode_all(images, preprocessing, None, workers, description, quiet)
        decoded.key = key
        return decoded
    return _decode_to_disk(folder, key, shape, images, preprocessing, workers, description, quiet)


def cache_key(
    images: LabeledImages, preprocessing: Preprocessing, cache_dir: Path | None = None
) -> str:
    """A hash of every image's content (file bytes or array bytes), of the preprocessing and
    of the formats decoded (opting in to one turns skipped files into pixels).

    File digests come from the folder's manifest under `cache_dir`: only files that changed
    since the last run are read."""
    settings = [CACHE_FORMAT, asdict(preprocessing), allowed_formats()]
    digest = hashlib.sha256(json.dumps(settings).encode())
    if isinstance(images.images, np.ndarray):
        digest.update(f"{images.images.shape} {images.images.dtype}".encode())
        digest.update(np.ascontiguousarray(images.images).tobytes())
        return digest.hexdigest()[:24]
    manifest = manifest_for(cache_dir, images.images)
    for path in images.images:
        # surrogateescape: a file name that is not UTF-8 (kept as lone surrogates) hashes too.
        digest.update(manifest.digest(path).encode("utf-8", "surrogateescape"))
    manifest.save()
    if manifest.read_files:
        logger.info("digested %d new or changed files", manifest.read_files)
    return digest.hexdigest()[:24]


def _rows_shape(count: int, preprocessing: Preprocessing) -> tuple[int, int, int, int]:
    size = preprocessing.image_size
    return (count, preprocessing.channels, size, size)


def _check_memory(shape: tuple[int, ...], description: str) -> None:
    """Refuse, before allocating, a memory cache larger than MEMORY_SHARE of the free RAM."""
    needed, available = math.prod(shape), available_memory()
    if available is None or needed <= MEMORY_SHARE * available:
        return
    raise UserError(
        f"{description}: the {shape[0]} decoded images need {needed / 1e9:.1f} GB in memory, "
        f"more than half of the {available / 1e9:.1f} GB available. Use --cache disk (a "
        "memory-mapped file, reused by later runs), --cache none (decode every epoch), or a "
        "smaller --image-size."
    )


def available_memory() -> int | None:
    """Bytes of RAM available to new allocations (Linux's MemAvailable); None if unknown."""
    try:
        with open("/proc/meminfo") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _room_on_disk(folder: Path, shape: tuple[int, ...]) -> bool:
    """Whether the cache file fits with DISK_MARGIN to spare; if not, say what happens."""
    folder.mkdir(parents=True, exist_ok=True)
    needed, free = math.prod(shape), shutil.disk_usage(folder).free
    if needed + DISK_MARGIN <= free:
        return True
    logger.warning(
        "no room for the decoded-image cache in %s (%.1f GB needed, %.1f GB free): decoding "
        "every image on the fly instead. Free some space or pass --cache-dir elsewhere.",
        folder, needed / 1e9, free / 1e9,
    )  # fmt: skip
    return False


class _DecodeJob(Dataset[list[tuple[int, np.ndarray | None, str]]]):
    """Decodes batches of images in worker processes: (index, pixels or None, reason)."""

    def __init__(self, images: LabeledImages, preprocessing: Preprocessing, keep: bool) -> None:
        self.images = images
        self.channels = preprocessing.channels
        self.resize: Callable[[torch.Tensor], torch.Tensor] = eval_transform(preprocessing)
        self.keep = keep

    def __len__(self) -> int:
        return (len(self.images) + _BATCH - 1) // _BATCH

    def __getitem__(self, batch: int) -> list[tuple[int, np.ndarray | None, str]]:
        start = batch * _BATCH
        return [self._one(i) for i in range(start, min(start + _BATCH, len(self.images)))]

    def _one(self, index: int) -> tuple[int, np.ndarray | None, str]:
        source = self.images.images[index]
        try:
            if isinstance(source, np.ndarray):
                image = array_to_tensor(source, self.channels)
            else:
                image = decode_file(source, self.channels)[0]
        except UnreadableImage as error:
            return index, None, error.reason
        pixels = self.resize(image).numpy() if self.keep else np.zeros(0, np.uint8)
        return index, pixels, ""


def _first(batch: list[Any]) -> Any:
    return batch[0]


def _decode_all(
    images: LabeledImages, preprocessing: Preprocessing, rows: Rows | None, workers: int,
    description: str, quiet: bool,
) -> DecodedSplit:  # fmt: skip
    """Decode every image, writing the pixels of those that decode into `rows`, in order."""
    job = _DecodeJob(images, preprocessing, rows is not None)
    loader = DataLoader(job, batch_size=1, num_workers=workers, collate_fn=_first)
    kept: list[int] = []
    skipped: list[Skipped] = []
    with progress(total=len(images), desc=description, quiet=quiet, unit="img") as bar:
        for batch in loader:
            for index, image, reason in batch:
                if image is None:
                    skipped.append(Skipped(str(images.images[index]), reason))
                    # printable: a name that is not UTF-8 cannot be written to a log as it is.
                    logger.warning(
                        "skipped %s: %s", printable(str(images.images[index])), printable(reason)
                    )
                    continue
                if rows is not None:
                    rows[len(kept)] = image  # rows stay in split order: batches arrive in order
                kept.append(index)
            bar.update(len(batch))
    stored = rows[: len(kept)] if isinstance(rows, np.ndarray) else None
    return DecodedSplit(np.asarray(kept, dtype=np.int64), skipped, stored)


class MappedRows:
    """The rows of a new .npy file, written through a memory map and released as they fill.

    `open_memmap` writes the header and sizes the file; the rows are then mapped here, so
    that written pages can be flushed and dropped from this process every RELEASE_BYTES:
    the file may be far larger than RAM. Rows arrive in order, so their CRC-32 is kept as
    they are written: the file is never read back to checksum it.
    """

    def __init__(self, path: Path, shape: tuple[int, int, int, int]) -> None:
        header = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
        offset = header.offset
        del header
        self.file = open(path, "r+b")  # noqa: SIM115 (closed by close())
        self.map = mmap.mmap(self.file.fileno(), 0)
        self.rows = np.ndarray(shape, np.uint8, buffer=self.map, offset=offset)
        self.offset, self.row_bytes, self.unreleased = offset, math.prod(shape[1:]), 0
        self.checksum, self.written = 0, 0

    def __setitem__(self, index: int, image: np.ndarray) -> None:
        if index != self.written:
            raise IndexError(f"row {index} written out of order (row {self.written} is next)")
        self.rows[index] = image
        # The row as stored (converted to uint8), while its page is still in memory.
        self.checksum = zlib.crc32(self.rows[index].data, self.checksum)
        self.written += 1
        self.unreleased += self.row_bytes
        if self.unreleased >= RELEASE_BYTES:
            self.release()

    def release(self) -> None:
        self.map.flush()  # the written pages are on disk now ...
        self.map.madvise(mmap.MADV_DONTNEED)  # ... so they can leave this process's memory
        self.unreleased = 0

    def close(self) -> None:
        self.release()
        del self.rows  # the map cannot close while an array still points into it
        self.map.close()
        os.fsync(self.file.fileno())
        self.file.close()


Rows = np.ndarray | MappedRows  # where decoded pixels are written, row by row


def _decode_to_disk(
    folder: Path, key: str, shape: tuple[int, int, int, int], images: LabeledImages,
    preprocessing: Preprocessing, workers: int, description: str, quiet: bool,
) -> DecodedSplit:  # fmt: skip
    """Decode straight into a new cache entry. Pixels first, under a temporary name, then
    renamed; the index last, with the pixel file's size, identity and checksum: a reader
    sees a whole, verified entry or none."""
    pixels_file = folder / f"{key}.npy"
    with cache_write(pixels_file) as partial:
        rows = MappedRows(partial, shape)
        try:
            decoded = _decode_all(images, preprocessing, rows, workers, description, quiet)
        finally:  # Ctrl-C included: cache_write then removes the half-written file
            rows.close()
    index = {
        "format": CACHE_FORMAT, "shape": list(shape), "kept": decoded.kept.tolist(),
        "reasons": [item.reason for item in decoded.skipped], "checksum": rows.checksum,
        **_identity(pixels_file),  # after the rename and mark_used: as readers will see it
    }  # fmt: skip
    _write_index(folder / f"{key}.json", index)
    enforce_limit(folder.parent)
    pixels = np.load(pixels_file, mmap_mode="r")  # the header only: the rows stay on disk
    return DecodedSplit(decoded.kept, decoded.skipped, pixels[: len(decoded.kept)], key)


def _identity(pixels_file: Path) -> dict[str, int]:
    """What changes when a file is rewritten, truncated or replaced (a rename keeps it)."""
    status = pixels_file.stat()
    return {"bytes": status.st_size, "inode": status.st_ino, "mtime_ns": status.st_mtime_ns}


def _write_index(index_file: Path, index: dict[str, Any]) -> None:
    with cache_write(index_file) as temporary:
        temporary.write_bytes(json.dumps(index).encode())


def _read_cached(
    folder: Path, key: str, images: LabeledImages, shape: tuple[int, ...]
) -> DecodedSplit | None:
    """The entry `key`, memory-mapped and verified, or None when there is none. A damaged
    entry (truncated, corrupt header, wrong shape, failed checksum, no index) gives one
    warning and None: the caller rebuilds it, and the new files replace the damaged ones."""
    pixels_file, index_file = folder / f"{key}.npy", folder / f"{key}.json"
    if not (pixels_file.is_file() or index_file.is_file()) or _being_indexed(pixels_file):
        return None

    def read() -> DecodedSplit:
        index = json.loads(index_file.read_text())
        kept, pixels = _verified(pixels_file, index, shape)
        # The skipped files' paths are this run's (the data folder may have moved).
        missing = np.setdiff1d(np.arange(len(images)), kept)
        reasons = zip(missing, index["reasons"], strict=True)
        skipped = [Skipped(str(images.images[i]), reason) for i, reason in reasons]
        # Rows past the images that decoded were reserved for those that did not: unused.
        return DecodedSplit(kept, skipped, pixels[: len(kept)], key)

    cached = read_or_none(read, "decoded-image cache entry", pixels_file, "rebuilding")
    if cached is not None:
        mark_used(index_file)
    return cached


def _being_indexed(pixels_file: Path) -> bool:
    """A pixel file just renamed into place whose index is not written yet: another run is
    between the two renames, so this is a miss, not a damaged entry."""
    try:
        age = time.time() - pixels_file.stat().st_mtime
    except OSError:
        return False
    return not pixels_file.with_suffix(".json").exists() and age < BEING_INDEXED


def _verified(
    pixels_file: Path, index: dict[str, Any], shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """(kept indices, memory-mapped pixels) of an entry, after checking its index, the pixel
    file's size, header and shape, and its identity (inode, mtime); only when that changed
    (a copied cache, or a rewritten file) the checksum of its rows. ValueError if one fails."""
    if index.get("format") != CACHE_FORMAT or tuple(index["shape"]) != tuple(shape):
        raise ValueError(f"made for another format or shape: {index.get('shape')}")
    size = pixels_file.stat().st_size
    if size != index["bytes"]:
        raise ValueError(f"{size} bytes instead of {index['bytes']}: truncated or overwritten")
    pixels = np.load(pixels_file, mmap_mode="r")
    if pixels.shape != tuple(shape) or pixels.dtype != np.uint8:
        raise ValueError(f"holds {pixels.dtype} rows of shape {pixels.shape}")
    kept = np.asarray(index["kept"], dtype=np.int64)
    if len(kept) + len(index["reasons"]) != shape[0]:
        raise ValueError("its index does not cover every image")
    if _identity(pixels_file) != {name: index.get(name) for name in ("bytes", "inode", "mtime_ns")}:
        row_bytes = math.prod(shape[1:])
        if _rows_checksum(pixels_file, pixels.offset, len(kept) * row_bytes) != index["checksum"]:
            raise ValueError("checksum mismatch: the pixels changed on disk")
        # Intact, only moved or copied: record its new identity so the next read is cheap.
        with contextlib.suppress(OSError):  # a read-only cache still serves
            _write_index(pixels_file.with_suffix(".json"), index | _identity(pixels_file))
    return kept, pixels


def _rows_checksum(path: Path, offset: int, length: int) -> int:
    """CRC-32 of `length` bytes of `path` from `offset`, read in pieces: a file larger than
    RAM is checked without being mapped into this process (CRC-32 runs at a few GB/s)."""
    checksum, piece = 0, bytearray(CHECK_PIECE)
    with open(path, "rb") as file:
        file.seek(offset)
        while length > 0:
            count = file.readinto(piece)
            if not count:
                raise ValueError("ends before its rows do")
            view = memoryview(piece)[: min(count, length)]
            checksum, length = zlib.crc32(view, checksum), length - len(view)
    return checksum

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
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import mmap
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from torchgraft.artifact import Preprocessing, atomic_write_bytes
from torchgraft.config import CACHE_MODES
from torchgraft.data.decode import UnreadableImage, array_to_tensor, decode_file
from torchgraft.data.manifest import manifest_for
from torchgraft.data.sources import LabeledImages
from torchgraft.data.transforms import eval_transform
from torchgraft.errors import UserError

logger = logging.getLogger(__name__)

__all__ = ["CACHE_MODES", "DecodedSplit", "Skipped", "decode_split"]

CACHE_FORMAT = 2  # bump when the stored entries would differ for the same key
_BATCH = 32  # images per worker round trip while decoding
MEMORY_SHARE = 0.5  # a memory cache may take at most this share of the available RAM
DISK_MARGIN = 1 << 30  # free disk space left over after a disk cache is written
RELEASE_BYTES = 256 << 20  # written cache pages dropped from memory this often


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
    cached = _read_cached(folder, key, shape)
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
    """A hash of every image's content (file bytes or array bytes) and of the preprocessing.

    File digests come from the folder's manifest under `cache_dir`: only files that changed
    since the last run are read."""
    digest = hashlib.sha256(json.dumps([CACHE_FORMAT, asdict(preprocessing)]).encode())
    if isinstance(images.images, np.ndarray):
        digest.update(str(images.images.shape).encode())
        digest.update(np.ascontiguousarray(images.images).tobytes())
        return digest.hexdigest()[:24]
    manifest = manifest_for(cache_dir, images.images)
    for path in images.images:
        digest.update(manifest.digest(path).encode())
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
    with tqdm(total=len(images), desc=description, disable=quiet, leave=False, unit="img") as bar:
        for batch in loader:
            for index, image, reason in batch:
                if image is None:
                    skipped.append(Skipped(str(images.images[index]), reason))
                    logger.warning("skipped %s: %s", images.images[index], reason)
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
    the file may be far larger than RAM.
    """

    def __init__(self, path: Path, shape: tuple[int, int, int, int]) -> None:
        header = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
        offset = header.offset
        del header
        self.file = open(path, "r+b")  # noqa: SIM115 (closed by close())
        self.map = mmap.mmap(self.file.fileno(), 0)
        self.rows = np.ndarray(shape, np.uint8, buffer=self.map, offset=offset)
        self.row_bytes, self.unreleased = math.prod(shape[1:]), 0

    def __setitem__(self, index: int, image: np.ndarray) -> None:
        self.rows[index] = image
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
    renamed; the index last, atomically: a reader sees a whole entry or none."""
    partial = folder / f"{key}.npy.partial-{os.getpid()}"
    rows = MappedRows(partial, shape)
    try:
        decoded = _decode_all(images, preprocessing, rows, workers, description, quiet)
    except BaseException:  # Ctrl-C included: no half-written file is left behind
        rows.close()
        partial.unlink(missing_ok=True)
        raise
    rows.close()
    os.replace(partial, folder / f"{key}.npy")
    index = {"kept": decoded.kept.tolist(), "skipped": [asdict(s) for s in decoded.skipped]}
    atomic_write_bytes(folder / f"{key}.json", json.dumps(index).encode())
    cached = _read_cached(folder, key, shape)
    assert cached is not None, "the entry just written reads back"
    return cached


def _read_cached(folder: Path, key: str, shape: tuple[int, ...]) -> DecodedSplit | None:
    """The entry `key`, memory-mapped, or None when it is missing or does not fit `shape`."""
    pixels_file, index_file = folder / f"{key}.npy", folder / f"{key}.json"
    if not (pixels_file.is_file() and index_file.is_file()):
        return None
    try:
        index = json.loads(index_file.read_text())
        pixels = np.load(pixels_file, mmap_mode="r")
        kept = np.asarray(index["kept"], dtype=np.int64)
        skipped = [Skipped(**item) for item in index["skipped"]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.warning("ignoring a damaged cache entry %s: %s", pixels_file, error)
        return None
    if pixels.shape[1:] != tuple(shape[1:]) or len(pixels) < len(kept):
        logger.warning("ignoring a cache entry of the wrong size: %s", pixels_file)
        return None
    # Rows past the images that decoded were reserved for those that did not: unused.
    return DecodedSplit(kept, skipped, pixels[: len(kept)], key)

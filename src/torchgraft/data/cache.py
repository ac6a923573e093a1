"""The decoded-image cache: every image is decoded and resized once, then reused.

Decoding a JPEG costs far more than a training step needs to spend on it. Here each image is
decoded, made upright, converted and resized to the training resolution once, and kept as
uint8 rows of one (N, C, S, S) array: in memory, or memory-mapped from disk where it is
keyed by the files' contents and the preprocessing, so later runs skip decoding too. The
same pass finds the files that cannot be decoded: they are skipped and reported, never fatal.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from torchgraft.artifact import Preprocessing, atomic_write, atomic_write_bytes
from torchgraft.config import CACHE_MODES
from torchgraft.data.decode import UnreadableImage, array_to_tensor, decode_file
from torchgraft.data.hashing import content_digest
from torchgraft.data.sources import LabeledImages
from torchgraft.data.transforms import eval_transform

logger = logging.getLogger(__name__)

__all__ = ["CACHE_MODES", "DecodedSplit", "Skipped", "decode_split"]

CACHE_FORMAT = 1  # bump when the stored pixels would differ for the same key
_BATCH = 32  # images per worker round trip while decoding


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
    key = cache_key(images, preprocessing)
    if mode != "disk":
        decoded = _decode_all(images, preprocessing, mode == "memory", workers, description, quiet)
        decoded.key = key
        return decoded
    folder = (cache_dir or default_cache_dir()) / "images"
    cached = _read_cached(folder, key)
    if cached is not None:
        logger.info("decoded-image cache hit: %s (%d images)", folder / key, len(cached.kept))
        return cached
    decoded = _decode_all(images, preprocessing, True, workers, description, quiet)
    decoded.key = key
    _write_cached(folder, key, decoded)
    return _read_cached(folder, key) or decoded


def cache_key(images: LabeledImages, preprocessing: Preprocessing) -> str:
    """A hash of every image's content (file bytes or array bytes) and of the preprocessing."""
    digest = hashlib.sha256(json.dumps([CACHE_FORMAT, asdict(preprocessing)]).encode())
    if isinstance(images.images, np.ndarray):
        digest.update(str(images.images.shape).encode())
        digest.update(np.ascontiguousarray(images.images).tobytes())
    else:
        for path in images.images:
            digest.update(_file_digest(path).encode())
    return digest.hexdigest()[:24]


def _file_digest(path: Path) -> str:
    try:
        return content_digest(path)
    except OSError:
        return f"unreadable:{path}"  # decoding will report it


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
    images: LabeledImages, preprocessing: Preprocessing, keep: bool, workers: int,
    description: str, quiet: bool,
) -> DecodedSplit:  # fmt: skip
    job = _DecodeJob(images, preprocessing, keep)
    loader = DataLoader(job, batch_size=1, num_workers=workers, collate_fn=_first)
    size, channels = preprocessing.image_size, preprocessing.channels
    pixels = np.empty((len(images), channels, size, size), np.uint8) if keep else None
    kept: list[int] = []
    skipped: list[Skipped] = []
    with tqdm(total=len(images), desc=description, disable=quiet, leave=False, unit="img") as bar:
        for batch in loader:
            for index, image, reason in batch:
                if image is None:
                    skipped.append(Skipped(str(images.images[index]), reason))
                    logger.warning("skipped %s: %s", images.images[index], reason)
                    continue
                if pixels is not None:
                    pixels[len(kept)] = image  # rows stay in split order: batches arrive in order
                kept.append(index)
            bar.update(len(batch))
    stored = pixels[: len(kept)] if pixels is not None else None
    return DecodedSplit(np.asarray(kept, dtype=np.int64), skipped, stored)


def _read_cached(folder: Path, key: str) -> DecodedSplit | None:
    pixels_file, index_file = folder / f"{key}.npy", folder / f"{key}.json"
    if not (pixels_file.is_file() and index_file.is_file()):
        return None
    try:
        index = json.loads(index_file.read_text())
        pixels = np.load(pixels_file, mmap_mode="r")
    except (OSError, ValueError) as error:
        logger.warning("ignoring a damaged cache entry %s: %s", pixels_file, error)
        return None
    skipped = [Skipped(**item) for item in index["skipped"]]
    return DecodedSplit(np.asarray(index["kept"], dtype=np.int64), skipped, pixels, key)


def _write_cached(folder: Path, key: str, decoded: DecodedSplit) -> None:
    """Pixels first, index last, each atomically: a reader sees a whole entry or none."""
    assert decoded.pixels is not None, "only decoded pixels are cached on disk"
    pixels = decoded.pixels
    # Streamed into the temporary file: no second in-memory copy of a large array.
    atomic_write(folder / f"{key}.npy", lambda file: np.save(file, pixels))
    index = {"kept": decoded.kept.tolist(), "skipped": [asdict(s) for s in decoded.skipped]}
    atomic_write_bytes(folder / f"{key}.json", json.dumps(index).encode())

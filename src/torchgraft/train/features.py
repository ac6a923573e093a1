"""Backbone features computed once, so the frozen phase trains only the head on them.

With a cache folder the features are kept on disk, keyed by the model, its backbone weights,
the preprocessing, the images' contents and their labels: a later run on the same data and
backbone skips the backbone entirely, and any change to weights, preprocessing, files or
labels (a relabelled dataset) makes a new entry, so the head always trains on today's
labels. An entry carries a checksum of its tensors; one that fails it, or does not load, is
recomputed with one warning.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, TensorDataset

from torchgraft.artifact import Preprocessing
from torchgraft.data import CachedImageDataset, ImageDataset, make_loader
from torchgraft.data.cache_files import cache_write, enforce_limit, mark_used, read_or_none
from torchgraft.models import GraftedClassifier
from torchgraft.progress import progress

logger = logging.getLogger(__name__)

FEATURE_FORMAT = 2  # bump when the stored entries would differ for the same key


@torch.no_grad()
def compute_features(
    model: GraftedClassifier,
    loader: DataLoader[Any],
    device: torch.device,
    *,
    description: str = "features",
    quiet: bool = False,
) -> TensorDataset:
    """(features, labels) for every image in `loader`, with the backbone in eval mode."""
    model.eval()
    features: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    for images, batch_labels in progress(loader, desc=description, quiet=quiet):
        features.append(model.features(images.to(device, non_blocking=True)).float().cpu())
        labels.append(torch.as_tensor(batch_labels))
    return TensorDataset(torch.cat(features), torch.cat(labels))


def backbone_digest(model: GraftedClassifier) -> str:
    """A hash of the backbone's weights and buffers (the head is not part of the features)."""
    head = {id(tensor) for tensor in model.head.state_dict(keep_vars=True).values()}
    digest = hashlib.sha256()
    for name, tensor in model.net.state_dict(keep_vars=True).items():
        if id(tensor) not in head:
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def feature_key(
    model_name: str, weights: str, preprocessing: Preprocessing, data_key: str,
    labels: np.ndarray,
) -> str:  # fmt: skip
    """The cache key of one split's features: everything they, and the labels stored beside
    them, depend on."""
    labels_digest = hashlib.sha256(np.ascontiguousarray(labels, np.int64).tobytes()).hexdigest()
    parts = [FEATURE_FORMAT, model_name, weights, asdict(preprocessing), data_key, labels_digest]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]


def labels_of(dataset: Any) -> np.ndarray | None:
    """The labels of a training dataset, in order, without decoding any image (None for a
    dataset of another kind: its features are then not cached)."""
    if isinstance(dataset, CachedImageDataset):
        return np.asarray(dataset.labels)
    if isinstance(dataset, ImageDataset):
        return np.asarray(dataset.images.labels)
    return None


def cached_features(
    model: GraftedClassifier,
    dataset: Any,
    key: str | None,
    cache_dir: Path | None,
    *,
    batch_size: int,
    device: torch.device,
    description: str,
    quiet: bool,
) -> TensorDataset:
    """Features of `dataset`, from `cache_dir/features/<key>` when there, computed otherwise.
    (The decoding pass before it, over the same cache folder, removed stale temporaries.)"""
    path = entry_path(cache_dir, key) if cache_dir is not None and key else None
    if path is not None:
        stored = read_entry(path, labels_of(dataset))
        if stored is not None:
            logger.info("feature cache hit: %s (%d images)", path, len(stored))
            return stored
    loader = make_loader(dataset, batch_size, False, 0)
    computed = compute_features(model, loader, device, description=description, quiet=quiet)
    if path is not None:
        write_entry(path, *computed.tensors)
    return computed


def entry_path(cache_dir: Path, key: str) -> Path:
    """Where the features under `key` are kept in the cache folder."""
    return cache_dir / "features" / f"{key}.safetensors"


def read_entry(path: Path, labels: np.ndarray | None) -> TensorDataset | None:
    """A verified entry, or None: missing, or damaged (one warning; the caller recomputes
    and its new file replaces this one)."""
    if not path.is_file():
        return None

    def read() -> TensorDataset:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
            features, stored = file.get_tensor("features"), file.get_tensor("labels")
        if metadata.get("format") != str(FEATURE_FORMAT):
            raise ValueError(f"made by another version (format {metadata.get('format')})")
        if metadata.get("checksum") != _checksum(features, stored):
            raise ValueError("checksum mismatch: the features changed on disk")
        # Belt and braces: the key digests the labels, so this fails only on a key
        # collision or a file copied in by hand.
        if labels is not None and not np.array_equal(stored.numpy(), labels):
            raise ValueError("its labels are not the dataset's")
        return TensorDataset(features, stored)

    entry = read_or_none(read, "feature cache entry", path, "recomputing")
    if entry is not None:
        mark_used(path)
    return entry


def write_entry(path: Path, features: torch.Tensor, labels: torch.Tensor) -> None:
    """Store an entry (atomically), then keep the cache folder within its size cap."""
    tensors = {"features": features.contiguous(), "labels": labels.contiguous()}
    metadata = {"format": str(FEATURE_FORMAT), "checksum": _checksum(*tensors.values())}
    with cache_write(path) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)
    enforce_limit(path.parent.parent)


def _checksum(*tensors: torch.Tensor) -> str:
    """CRC-32 of the tensors' bytes, their shapes and dtypes included."""
    checksum = 0
    for tensor in tensors:
        checksum = zlib.crc32(f"{tuple(tensor.shape)} {tensor.dtype}".encode(), checksum)
        checksum = zlib.crc32(np.ascontiguousarray(tensor.numpy()).data, checksum)
    return str(checksum)


@dataclass(frozen=True)
class FeatureSettings:
    """Where the head phase's features come from and where they are kept."""

    model_name: str
    preprocessing: Preprocessing
    train_key: str  # the decoded training images' cache key (their contents)
    val_key: str
    cache_dir: Path | None  # None: compute every time
    views: int  # 1 plain pass + views-1 augmented passes of the training images
    augment: str  # the augmentation preset of the augmented views
    seed: int
    batch_size: int


def frozen_features(
    model: GraftedClassifier, train_plain: Any, train_augmented: Any, val: Any,
    settings: FeatureSettings, device: torch.device, quiet: bool,
) -> tuple[TensorDataset, TensorDataset]:  # fmt: skip
    """Backbone features of train and val images: from the feature cache, or computed once.

    A frozen backbone maps each image to fixed features, so one pass is enough and every head
    epoch after it costs milliseconds. With `views` K > 1 the training images pass K times,
    first plain, then through the augmentation preset (seeded per view), so the head sees
    varied views while the backbone still runs once per view.
    """
    compute = functools.partial(
        cached_features, model, cache_dir=settings.cache_dir, batch_size=settings.batch_size,
        device=device, quiet=quiet,
    )  # fmt: skip
    key = functools.partial(_split_key, settings, backbone_digest(model))
    val_features = compute(val, key(val, settings.val_key), description="features (val)")
    views = settings.views if settings.augment != "none" else 1
    train_views = []
    for view in range(views):
        images = train_plain if view == 0 else train_augmented
        # An augmented view also depends on the preset and the seed that drew it.
        tag = "" if view == 0 else f"|view{view}|{settings.augment}|{settings.seed}"
        with seeded(settings.seed * 7919 + view):
            train_views.append(
                compute(images, key(images, settings.train_key + tag),
                        description=f"features (train, view {view + 1})")
            )  # fmt: skip
    features = torch.cat([view.tensors[0] for view in train_views])
    labels = torch.cat([view.tensors[1] for view in train_views])
    return TensorDataset(features, labels), val_features


def _split_key(settings: FeatureSettings, weights: str, dataset: Any, data_key: str) -> str | None:
    """The feature key of one split (None, not cached, when its labels are not known)."""
    labels = labels_of(dataset)
    if labels is None:
        return None
    return feature_key(settings.model_name, weights, settings.preprocessing, data_key, labels)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block under its own seed, leaving the global random state as it was."""
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(state)

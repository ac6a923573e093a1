"""Backbone features computed once, so the frozen phase trains only the head on them.

With a cache folder the features are kept on disk, keyed by the model, its backbone weights,
the preprocessing and the images' contents: a later run on the same data and backbone skips
the backbone entirely, and any change to weights, preprocessing or files makes a new entry.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from torchgraft.artifact import Preprocessing, load_tensors, save_tensors
from torchgraft.data import make_loader
from torchgraft.models import GraftedClassifier

logger = logging.getLogger(__name__)


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
    for images, batch_labels in tqdm(loader, desc=description, disable=quiet, leave=False):
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


def feature_key(model_name: str, weights: str, preprocessing: Preprocessing, data_key: str) -> str:
    parts = [model_name, weights, asdict(preprocessing), data_key]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]


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
    """Features of `dataset`, from `cache_dir/features/<key>` when there, computed otherwise."""
    path = cache_dir / "features" / f"{key}.safetensors" if cache_dir and key else None
    if path is not None and path.is_file():
        stored = load_tensors(path)
        logger.info("feature cache hit: %s (%d images)", path, len(stored["labels"]))
        return TensorDataset(stored["features"], stored["labels"])
    loader = make_loader(dataset, batch_size, False, 0)
    computed = compute_features(model, loader, device, description=description, quiet=quiet)
    if path is not None:
        features, labels = computed.tensors
        save_tensors(path, {"features": features, "labels": labels})
    return computed


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
    base = functools.partial(
        feature_key, settings.model_name, backbone_digest(model), settings.preprocessing
    )
    val_features = compute(val, base(settings.val_key), description="features (val)")
    views = settings.views if settings.augment != "none" else 1
    train_views = []
    for view in range(views):
        images = train_plain if view == 0 else train_augmented
        # An augmented view also depends on the preset and the seed that drew it.
        tag = "" if view == 0 else f"|view{view}|{settings.augment}|{settings.seed}"
        with seeded(settings.seed * 7919 + view):
            train_views.append(
                compute(images, base(settings.train_key + tag),
                        description=f"features (train, view {view + 1})")
            )  # fmt: skip
    features = torch.cat([view.tensors[0] for view in train_views])
    labels = torch.cat([view.tensors[1] for view in train_views])
    return TensorDataset(features, labels), val_features


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block under its own seed, leaving the global random state as it was."""
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(state)

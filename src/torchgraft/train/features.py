"""Backbone features computed once, so the frozen phase trains only the head on them.

With a cache folder the features are kept on disk, keyed by the model, its backbone weights,
the preprocessing and the images' contents: a later run on the same data and backbone skips
the backbone entirely, and any change to weights, preprocessing or files makes a new entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
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

"""Frozen phase: one head epoch on cached features against recomputing the frozen backbone.

Both arms train the same linear head on the same mnist5k training images (64 px,
EfficientNet-Lite0 with the bundled weights), in one process. The reference runs the frozen
backbone on every batch of every epoch (the usual `requires_grad=False` recipe); torchgraft
computes the features once and each head epoch reads them. Prints JSON with the ratio.

    python benchmarks/head_features.py [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
import torch.nn.functional as F

from torchgraft.artifact import Preprocessing
from torchgraft.data import decode_split, load_data, make_loader, split_datasets
from torchgraft.models import create_classifier
from torchgraft.models.registry import IMAGENET_MEAN, IMAGENET_STD
from torchgraft.train.features import compute_features


def head_epoch(head: torch.nn.Module, loader: object, backbone: object | None) -> float:
    """Seconds for one epoch of head training; `backbone` maps images to features if given."""
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3)
    started = time.perf_counter()
    for inputs, labels in loader:  # type: ignore[attr-defined]
        if backbone is not None:
            with torch.no_grad():
                inputs = backbone(inputs)  # type: ignore[operator]
        loss = F.cross_entropy(head(inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    prep = Preprocessing(64, "crop", IMAGENET_MEAN, IMAGENET_STD, 3, "bicubic")
    train = load_data("mnist5k").train
    images, _ = split_datasets(train, decode_split(train, prep, quiet=True), prep, "none")
    model = create_classifier(
        "efficientnet_lite0", 10, channels=3, image_size=64, mean=prep.mean, std=prep.std,
        pretrained=True,
    ).eval()  # fmt: skip
    image_loader = make_loader(images, 64, True, 0)

    started = time.perf_counter()
    features = compute_features(
        model, make_loader(images, 128, False, 0), torch.device("cpu"), quiet=True
    )
    cache_seconds = time.perf_counter() - started
    feature_loader = make_loader(features, 64, True, 0)

    recompute = [head_epoch(model.head, image_loader, model.features) for _ in range(args.epochs)]
    cached = [head_epoch(model.head, feature_loader, None) for _ in range(args.epochs)]
    per_epoch_recompute, per_epoch_cached = min(recompute), min(cached)
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    print(json.dumps({
        "data": "mnist5k train (4,000 images), efficientnet_lite0 at 64 px",
        "feature_pass_once_s": round(cache_seconds, 3),
        "head_epoch_s_recomputing_backbone": round(per_epoch_recompute, 3),
        "head_epoch_s_cached_features": round(per_epoch_cached, 4),
        "speedup_per_epoch": round(per_epoch_recompute / per_epoch_cached, 1),
        "target_at_least": 100,
        "machine": machine,
    }))  # fmt: skip


if __name__ == "__main__":
    main()

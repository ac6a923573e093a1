"""Embeddings of every readable image of a data source, by the backbone training would use.

The deep audit compares images by what the network sees, not by their pixels. It builds the
model, splits, preprocessing and decoded images exactly as `graft train` would with the same
config, and embeds every image three times:
- as training sees it, for the linear probe that finds wrong labels. The embedding joins
  three views, each scaled to unit length: the pooled features the frozen phase trains on,
  and the stride-8 and stride-16 feature maps pooled to 2x2. On mnist5k a linear probe
  reaches 92% on the pooled features of the ImageNet backbone alone, 97% with the middle
  stages joined;
- its content, uniform borders trimmed (`content_box`), for finding copies: a crop that
  cut into the margin shifts and rescales what is left, and at 64 px that moves the
  embedding of a digit further than the nearest other digit (measured: at an 85% crop, a
  copy is closer to its original than any other image only 33% of the time untrimmed,
  100% trimmed);
- that content mirrored, so a flipped copy is found as a copy.

Everything goes through training's feature cache. The pooled features of the first pass
are stored under the key training uses for its frozen phase, so a later `graft train` of the
same data and backbone skips its own pass; a second audit reads all three back.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional

from torchgraft.config import ModelConfig, RunConfig
from torchgraft.data import (
    DataSplits,
    DecodedSplit,
    decode_split,
    make_loader,
    split_datasets,
)
from torchgraft.data.cache import cache_root
from torchgraft.devices import resolve_device
from torchgraft.errors import UserError
from torchgraft.evaluate.neighbours import normalized
from torchgraft.models import GraftedClassifier, get_spec
from torchgraft.progress import progress
from torchgraft.train.features import (
    backbone_digest,
    entry_path,
    feature_key,
    labels_of,
    read_entry,
    write_entry,
)
from torchgraft.train.recipe import build_model
from torchgraft.train.setup import decode_splits, resolve_preprocessing

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
MIDDLE_REDUCTIONS = (8, 16)  # strides of the feature maps joined to the pooled features
_GRID = 2  # each middle feature map is pooled to GRID x GRID: coarse layout is kept
# A border pixel's channels differ from the border's median colour by at most this many grey
# levels for the border to count as background (JPEG noise and antialiasing stay below it).
BACKGROUND_TOLERANCE = 24
_CONTENT_MARGIN = 0.1  # background kept around the content, as a share of its longer side
# Bump when the embeddings would differ for the same images and backbone (the stages, the
# grid, the content box): the cache tags carry it, so old entries are not read.
EMBEDDING_FORMAT = 1
_VIEWS = ("embedding", "content", "content|mirrored")  # cache tags of the three embeddings


@dataclass
class Embeddings:
    """Unit-length embeddings of the readable images, one row per image."""

    split: list[str]  # the split each row's image is used in: train, val or test
    index: np.ndarray  # its position in that split (DataSplits order)
    labels: np.ndarray  # its given label (a class index)
    plain: torch.Tensor  # (N, D) of the image as training sees it
    content: torch.Tensor  # (N, D) of its content, borders trimmed (content_box)
    mirrored: torch.Tensor  # (N, D) of that content flipped left to right
    model: str  # the backbone that embedded them
    image_size: int  # ... at this input side length, in pixels


def embed(config: RunConfig, splits: DataSplits, quiet: bool = False) -> Embeddings:
    """Embeddings of every image of `splits` that decodes.

    `config` is a training config (model, weights, image size, cache) and `splits` the
    data it trains on (`load_run_splits(config)`): the images are decoded as that run would
    decode them, and embedded by its pretrained backbone on `config.train.device`.
    """
    spec = get_spec(config.model.name)
    if not (spec.pretrainable and config.model.pretrained):
        raise UserError(
            f"--deep needs a pretrained backbone to judge the images by, and "
            f"{config.model.name} would start from random weights. Leave out --model to use "
            f"the bundled {ModelConfig().name}, or name a pretrained timm model (--weights FILE "
            "when offline)."
        )
    preprocessing = resolve_preprocessing(spec, config.data, splits)
    model = build_model(config, preprocessing, len(splits.class_names), pretrained=True)
    device = resolve_device(config.train.device)
    model.to(device).eval()
    decoded = decode_splits(splits, preprocessing, config.data, quiet)
    if splits.test is not None:
        decoded["test"] = decode_split(
            splits.test, preprocessing, mode=config.data.cache,
            cache_dir=cache_root(config.data.cache_dir), description="decoding test",
            quiet=quiet,
        )  # fmt: skip
    cache_dir = cache_root(config.data.cache_dir) if config.train.feature_cache else None
    weights = backbone_digest(model)
    rows: dict[str, list[Any]] = {"split": [], "index": [], "labels": [], "views": []}
    for name, split in decoded.items():
        if len(split.kept) == 0:
            continue
        dataset, _ = split_datasets(getattr(splits, name), split, preprocessing, "none")
        labels = labels_of(dataset)
        assert labels is not None, "split_datasets gives datasets that know their labels"
        key = feature_key(config.model.name, weights, preprocessing, split.key, labels)
        rows["split"] += [name] * len(labels)
        rows["index"].append(split.kept)
        rows["labels"].append(labels)
        batch = config.data.batch_size
        rows["views"].append(
            _embed_split(model, dataset, key, cache_dir, device, name, batch, quiet)
        )
    if not rows["split"]:
        raise _nothing_readable(decoded)
    plain, content, mirrored = (torch.cat(view) for view in zip(*rows["views"], strict=True))
    return Embeddings(
        rows["split"], np.concatenate(rows["index"]), np.concatenate(rows["labels"]),
        plain, content, mirrored, config.model.name, preprocessing.image_size,
    )  # fmt: skip


def _embed_split(
    model: GraftedClassifier, dataset: Any, key: str, cache_dir: Path | None,
    device: torch.device, name: str, batch_size: int, quiet: bool,
) -> list[torch.Tensor]:  # fmt: skip
    """The three embeddings of one split: from the cache, or one pass over the images that
    also leaves training's frozen-phase features in the cache."""
    labels = torch.as_tensor(labels_of(dataset))
    paths = [entry_path(cache_dir, _tagged(key, tag)) for tag in _VIEWS] if cache_dir else []
    stored = [read_entry(path, labels.numpy()) for path in paths]
    if stored and all(entry is not None for entry in stored):
        logger.info("embedding cache hit: %s (%d images)", paths[0], len(labels))
        return [entry.tensors[0] for entry in stored if entry is not None]
    pooled, *views = _backbone_pass(model, dataset, device, batch_size, name, quiet)
    if cache_dir is not None:
        training = entry_path(cache_dir, key)  # what training's frozen phase computes
        if not training.is_file() and _same_as_training(model, dataset, pooled, device):
            write_entry(training, pooled, labels)
        for path, view in zip(paths, views, strict=True):
            write_entry(path, view, labels)
    return views


def _tagged(key: str, tag: str) -> str:
    return hashlib.sha256(f"{key}|{tag}|{EMBEDDING_FORMAT}".encode()).hexdigest()[:24]


@torch.no_grad()
def _same_as_training(
    model: GraftedClassifier, dataset: Any, pooled: torch.Tensor, device: torch.device
) -> bool:
    """Whether the pass's pooled features are model.features' (checked on a few images):
    only then may training's frozen head read them from the cache."""
    images = torch.stack([dataset[index][0] for index in range(min(4, len(dataset)))])
    expected = model.features(images.to(device)).float().cpu()
    return bool(torch.allclose(pooled[: len(expected)], expected, rtol=1e-4, atol=1e-4))


@torch.no_grad()
def _backbone_pass(
    model: GraftedClassifier, dataset: Any, device: torch.device, batch_size: int, name: str,
    quiet: bool,
) -> list[torch.Tensor]:  # fmt: skip
    """[training's pooled features, embeddings, content embeddings, mirrored ones]: each
    batch passes the backbone three times, so batches are training's size, not twice it."""
    middle = middle_stages(model.net)
    outputs: list[list[torch.Tensor]] = [[], [], [], []]
    loader = make_loader(dataset, batch_size, False, 0)
    description = f"embedding {name}"
    for images, _ in progress(loader, desc=description, quiet=quiet):
        images = images.to(device, non_blocking=True)
        content = torch.stack([content_box(image) for image in images])
        pooled, plain = _embedding(model, images, middle)
        batch = [pooled, plain, _embedding(model, content, middle)[1]]
        batch.append(_embedding(model, content.flip(-1), middle)[1])
        for output, tensor in zip(outputs, batch, strict=True):
            output.append(tensor.cpu())
    return [torch.cat(output) for output in outputs]


def _embedding(
    model: GraftedClassifier, images: torch.Tensor, middle: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled features as model.features gives them, the joined unit-length embedding)."""
    inputs = model.normalize(images)
    if not middle:  # a net without timm's intermediates: the pooled features alone
        features = model.net.forward_head(model.net.forward_features(inputs), pre_logits=True)
        return features.float(), normalized(features)
    final, maps = model.net.forward_intermediates(inputs, indices=middle)
    features = model.net.forward_head(final, pre_logits=True).float()
    parts = [normalized(features)]
    parts += [normalized(functional.adaptive_avg_pool2d(m.float(), _GRID).flatten(1)) for m in maps]
    return features, torch.cat(parts, 1) / len(parts) ** 0.5


def middle_stages(net: Any) -> list[int]:
    """Indices (into timm's feature_info) of the last stage at each of MIDDLE_REDUCTIONS,
    never the final stage (it is in the pooled features already); [] when the net does not
    offer them."""
    info = getattr(net, "feature_info", None)
    if info is None or not hasattr(net, "forward_intermediates"):
        return []
    reductions = [int(stage["reduction"]) for stage in info][:-1]
    chosen = {r: i for i, r in enumerate(reductions) if r in MIDDLE_REDUCTIONS}
    return sorted(chosen.values())


def content_box(image: torch.Tensor) -> torch.Tensor:
    """A (C, H, W) uint8 image cut to what differs from its border's colour, padded square
    with that colour and a margin, resized back to H x W: two crops of one picture that cut
    only into its background come out alike. An image with no uniform border (most
    photos) is returned as it is."""
    channels, height, width = image.shape
    border = torch.cat([image[:, 0], image[:, -1], image[:, :, 0], image[:, :, -1]], 1)
    background = border.float().median(1).values[:, None, None]
    content = ((image.float() - background).abs() > BACKGROUND_TOLERANCE).any(0)
    rows, columns = content.any(1).nonzero(), content.any(0).nonzero()
    if len(rows) == 0:
        return image  # blank: nothing to cut to
    top, bottom = int(rows[0]), int(rows[-1]) + 1
    left, right = int(columns[0]), int(columns[-1]) + 1
    if (top, left, bottom, right) == (0, 0, height, width):
        return image
    side = round(max(bottom - top, right - left) * (1 + 2 * _CONTENT_MARGIN))
    canvas = background.expand(channels, side, side).clone()
    down, across = (side - (bottom - top)) // 2, (side - (right - left)) // 2
    canvas[:, down : down + bottom - top, across : across + right - left] = image[
        :, top:bottom, left:right
    ]
    resized = functional.interpolate(
        canvas[None], size=(height, width), mode="bilinear", antialias=True, align_corners=False
    )
    return resized[0].round().clamp(0, 255).to(torch.uint8)


def _nothing_readable(decoded: dict[str, DecodedSplit]) -> Exception:
    skipped = [s for split in decoded.values() for s in split.skipped]
    reasons = "; ".join(f"{s.path}: {s.reason}" for s in skipped[:3])
    return UserError(f"no readable image to embed ({len(skipped)} skipped: {reasons})")

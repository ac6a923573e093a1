"""Epoch time of the data pipeline with the decoded-image cache against decoding every epoch.

Both arms feed the same images at the same resolution through a DataLoader, in one process,
one after the other; only the loading differs. The model is left out so the ratio measures
what the cache changes (with a model, each arm's epoch adds the same compute).

    python benchmarks/data_cache.py [--epochs 3] [--jpegs 2000] [--workers 0]

Prints one JSON object per data set.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from torchgraft.artifact import Preprocessing
from torchgraft.data import decode_split, load_data, make_loader, split_datasets
from torchgraft.data.sources import LabeledImages
from torchgraft.models.registry import IMAGENET_MEAN, IMAGENET_STD


def epoch_seconds(dataset: Any, workers: int, epochs: int) -> float:
    """Mean wall time of one pass over `dataset` in batches of 64."""
    loader = make_loader(dataset, 64, True, workers)
    times = []
    for _ in range(epochs):
        started = time.perf_counter()
        for _images, _labels in loader:
            pass
        times.append(time.perf_counter() - started)
    return float(np.mean(times))


def compare(
    name: str, images: LabeledImages, prep: Preprocessing, workers: int, epochs: int
) -> dict[str, Any]:
    started = time.perf_counter()
    cached = decode_split(images, prep, mode="memory", workers=workers, quiet=True)
    build = time.perf_counter() - started
    checked = decode_split(images, prep, mode="none", workers=workers, quiet=True)
    cached_set, _ = split_datasets(images, cached, prep, "none")
    decoding_set, _ = split_datasets(images, checked, prep, "none")
    with_cache = epoch_seconds(cached_set, workers, epochs)
    every_epoch = epoch_seconds(decoding_set, workers, epochs)
    return {
        "data": name,
        "images": len(images),
        "image_size": prep.image_size,
        "workers": workers,
        "cache_build_s": round(build, 3),
        "epoch_s_decode_every_epoch": round(every_epoch, 3),
        "epoch_s_cached": round(with_cache, 3),
        "speedup": round(every_epoch / with_cache, 1),
    }


def generated_jpegs(folder: Path, count: int) -> LabeledImages:
    """`count` 256x256 JPEGs of smooth noise (realistic file sizes), two classes."""
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        small = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((256, 256), Image.Resampling.BICUBIC)
        path = folder / f"{index:05d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return LabeledImages(paths, np.arange(count, dtype=np.int64) % 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--jpegs", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"

    mnist = load_data("mnist5k").train
    prep = Preprocessing(64, "crop", IMAGENET_MEAN, IMAGENET_STD, 3, "bicubic")
    print(
        json.dumps(
            {**compare("mnist5k", mnist, prep, args.workers, args.epochs), "machine": machine}
        )
    )

    with tempfile.TemporaryDirectory() as folder:
        jpegs = generated_jpegs(Path(folder), args.jpegs)
        prep = Preprocessing(224, "crop", IMAGENET_MEAN, IMAGENET_STD, 3, "bicubic")
        result = compare(f"{args.jpegs} JPEGs 256px", jpegs, prep, args.workers, args.epochs)
        print(json.dumps({**result, "machine": machine}))


if __name__ == "__main__":
    main()

"""Resolving what a run needs before training: preprocessing, the run directory, the data."""

from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path

import numpy as np
import torch

from torchgraft.artifact import Preprocessing, Run, RunInfo, atomic_write_bytes, library_versions
from torchgraft.config import DataConfig, RunConfig, to_dict
from torchgraft.data import DataSplits, DecodedSplit, decode_split, load_display_names
from torchgraft.data.cache import cache_root
from torchgraft.data.sources import printable
from torchgraft.errors import UserError
from torchgraft.models.registry import BackboneSpec

logger = logging.getLogger(__name__)

SKIPPED_FILE = "skipped.csv"


def resolve_preprocessing(
    spec: BackboneSpec, data: DataConfig, splits: DataSplits
) -> Preprocessing:
    """Input size, channels and normalisation for this model on this data."""
    return Preprocessing(
        image_size=data.image_size or default_image_size(spec, splits.native_size),
        resize_mode=data.resize,
        mean=spec.mean,
        std=spec.std,
        channels=3 if spec.pretrainable else splits.channels,
        interpolation=spec.interpolation,
    )


def default_image_size(spec: BackboneSpec, native_size: int | None) -> int:
    """The model's own size, except for tiny bundled images (28 px digits).

    Scratch nets use tiny images as they are; a pretrained backbone sees them upscaled to
    64 px, enough for its stride-32 features and far cheaper than 224 px.
    """
    if native_size is None:
        return spec.image_size
    return native_size if not spec.pretrainable else max(native_size, 64)


def create_run(
    config: RunConfig, splits: DataSplits, preprocessing: Preprocessing, write: bool = True
) -> Run:
    """A new run directory whose graft.json already describes the model to come.

    With `write` False (DDP ranks other than 0) the Run exists only in memory.
    """
    class_names = splits.class_names
    names_file = config.data.class_names
    info = RunInfo(
        model_name=config.model.name,
        class_names=class_names,
        display_names=load_display_names(names_file, class_names) if names_file else class_names,
        preprocessing=preprocessing,
        config=to_dict(config),
        data_fingerprint=splits.fingerprint(),
        versions=library_versions(),
    )
    path = unique_run_path(
        config.train.runs_dir, config.train.name, config.model.name, splits.source
    )
    return Run.create(path, info) if write else Run(path, info)


def unique_run_path(runs_dir: str, name: str | None, model_name: str, source: str) -> Path:
    """runs/<name>, or runs/<model>-<data>[-2, -3, ...] so earlier runs are never overwritten."""
    if name:
        return Path(runs_dir) / name
    base = f"{model_name}-{Path(source).name or 'data'}"
    candidate, number = Path(runs_dir) / base, 2
    while candidate.exists():
        candidate, number = Path(runs_dir) / f"{base}-{number}", number + 1
    return candidate


def decode_splits(
    splits: DataSplits, preprocessing: Preprocessing, data: DataConfig, quiet: bool
) -> dict[str, DecodedSplit]:
    """One decoding pass per split: fills the decoded-image cache and finds unreadable files."""
    cache_dir = cache_root(data.cache_dir)
    decoded = {}
    for name, split in (("train", splits.train), ("val", splits.val)):
        decoded[name] = decode_split(
            split, preprocessing, mode=data.cache, cache_dir=cache_dir,
            workers=decode_workers(len(split), data.num_workers),
            description=f"decoding {name}", quiet=quiet,
        )  # fmt: skip
    return decoded


def decode_workers(count: int, num_workers: int | None) -> int:
    """Worker processes for the one-off decoding pass: the cores, unless the split is tiny.

    Nothing else computes during this pass, so using every core cannot oversubscribe.
    """
    if count < 256:
        return 0
    return max(num_workers or 0, min(2, os.cpu_count() or 1))


MAX_LOADER_WORKERS = 8


def loader_workers(num_workers: int | None, device: torch.device) -> int:
    """DataLoader processes: as asked, else none on a CPU (its cores run the steps, and
    workers would compete with them) and the cores less one, at most 8, for a GPU."""
    if num_workers is not None:
        return num_workers
    if device.type == "cpu":
        return 0
    return max(1, min(MAX_LOADER_WORKERS, (os.cpu_count() or 2) - 1))


def record_skipped(
    run: Run, splits: DataSplits, decoded: dict[str, DecodedSplit], write: bool = True
) -> None:
    """Write skipped.csv (path, split, reason); refuse to go on without usable images."""
    run.info.data_summary = {
        **{f"{name}_images": len(result.kept) for name, result in decoded.items()},
        "skipped": sum(len(result.skipped) for result in decoded.values()),
    }
    if write:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["path", "split", "reason"])
        for name, result in decoded.items():
            writer.writerows(
                [printable(str(skipped.path)), name, skipped.reason] for skipped in result.skipped
            )
        atomic_write_bytes(run.path / SKIPPED_FILE, buffer.getvalue().encode())
        run.save_info()
    total = run.info.data_summary["skipped"]
    if total:
        logger.warning("%d unreadable files skipped, listed in %s", total, run.path / SKIPPED_FILE)
    for name, result in decoded.items():
        labels = getattr(splits, name).labels[result.kept]
        if len(labels) == 0:
            raise UserError(
                f"no readable images in the {name} split ({len(result.skipped)} skipped, "
                f"see {run.path / SKIPPED_FILE})"
            )
        empty = sorted(set(range(len(splits.class_names))) - set(np.unique(labels).tolist()))
        for label in empty:
            logger.warning("class %r has no readable %s images", splits.class_names[label], name)

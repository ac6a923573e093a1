"""`graft lr-find` on its own: the learning-rate sweep without creating a training run.

The sweep writes its plot and curve to a folder of its own, `<runs_dir>/lr-find/<model>-
<data>` (numbered if taken), so the `graft train` that follows still gets `<runs_dir>/<model>-
<data>`. The whole command, loading and decoding included, keeps to a time limit: the sweep
gets what is left of it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from torchgraft.artifact import Preprocessing, atomic_write_bytes
from torchgraft.config import RunConfig, to_dict
from torchgraft.data import DataSplits, load_run_splits, split_datasets
from torchgraft.errors import UserError
from torchgraft.models import get_spec
from torchgraft.train.distributed import SINGLE
from torchgraft.train.lr_find import LrFindResult, save_lr_plot
from torchgraft.train.phases import ImageSet
from torchgraft.train.recipe import build_model, place_model, sweep_fine_tune, with_model_defaults
from torchgraft.train.setup import (
    decode_splits,
    resolve_preprocessing,
    unique_run_path,
)

logger = logging.getLogger(__name__)

FOLDER = "lr-find"  # under runs_dir: sweeps never take a training run's name
FINISH_S = 2.0  # kept back for the plot (matplotlib's first figure: 1.6 s measured on a CPU)


@dataclass(frozen=True)
class LrFindReport:
    """What `graft lr-find` found and where it put it."""

    suggestion: float  # the head's learning rate to train with (`graft train --lr`)
    path: Path  # the sweep's own folder, <runs_dir>/lr-find/<model>-<data>
    plot: Path  # figures/lr_find.png in it (figures/lr_find.json beside it holds the curve)
    result: LrFindResult  # the curve, the step plan's budget and estimate
    time_limit_s: float  # the whole command's limit, loading and decoding included


def run_lr_find(
    config: RunConfig, time_limit_s: float, started: float | None = None
) -> LrFindReport:
    """Sweep the learning rate for `config`'s fine-tune set-up within `time_limit_s` seconds.

    The limit counts from `started` (a `time.perf_counter()` value; default: now); what
    loading the data and the model leaves of it, less FINISH_S for the plot, is the sweep's.
    """
    started = time.perf_counter() if started is None else started
    torch.manual_seed(config.train.seed)
    splits = load_run_splits(config)
    spec = get_spec(config.model.name)
    preprocessing = resolve_preprocessing(spec, config.data, splits)
    model = build_model(config, preprocessing, len(splits.class_names), pretrained=True)
    device = place_model(model, config, SINGLE)
    images = _training_images(config, splits, preprocessing)
    spent = time.perf_counter() - started
    logger.info(
        "lr-find: %.1f s of the %.0f s time limit went on loading the data and the model; "
        "the sweep gets the rest, less %.0f s for the plot",
        spent, time_limit_s, FINISH_S,
    )  # fmt: skip
    # Training's own resolution (the model's defaults filled in), so the groups are its groups.
    train = with_model_defaults(replace(config, train=replace(config.train, lr=1.0))).train
    result = sweep_fine_tune(
        model, images, train, config.data, device, max(time_limit_s - spent - FINISH_S, 1e-3)
    )
    path = unique_run_path(
        str(Path(config.train.runs_dir) / FOLDER),
        config.train.name,
        config.model.name,
        splits.source,
    )
    plot = write_lr_find(path, result, config)
    logger.info("lr-find suggests %.2e (plot: %s)", result.suggestion, plot)
    return LrFindReport(result.suggestion, path, plot, result, time_limit_s)


def _training_images(
    config: RunConfig, splits: DataSplits, preprocessing: Preprocessing
) -> ImageSet:
    """The augmented training images, as fine-tuning sees them; refuses a split with none."""
    decoded = decode_splits(splits, preprocessing, config.data, config.train.quiet)
    kept, skipped = len(decoded["train"].kept), len(decoded["train"].skipped)
    if skipped:
        logger.warning("%d unreadable training files skipped", skipped)
    if kept == 0:
        raise UserError(
            f"no readable training images in {splits.source} ({skipped} skipped): run "
            f"`graft doctor {splits.source}` to see why."
        )
    _, images = split_datasets(splits.train, decoded["train"], preprocessing, config.data.augment)
    return images


def write_lr_find(path: Path, result: LrFindResult, config: RunConfig) -> Path:
    """figures/lr_find.png and figures/lr_find.json (the curve and the config swept)."""
    plot = save_lr_plot(result, path / "figures" / "lr_find.png")
    record = {**result.to_dict(), "config": to_dict(config)}
    atomic_write_bytes(path / "figures" / "lr_find.json", json.dumps(record, indent=1).encode())
    return plot

"""Real images for export: validation images for the parity check, training images for
int8 calibration, rebuilt from the run's recorded data config the way evaluation does."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from torchgraft.artifact import Run
from torchgraft.config import config_from_dict
from torchgraft.data import DataSplits, LabeledImages, decode_split, load_run_splits
from torchgraft.errors import UserError

logger = logging.getLogger(__name__)

PARITY_IMAGES = 1000  # validation images the parity check uses at most
CALIBRATION_IMAGES = 256  # training images int8 calibration uses at most


@dataclass
class ImageSet:
    pixels: np.ndarray  # (N, C, S, S) uint8: the exported models' input
    labels: np.ndarray  # (N,) class indices
    source: str  # which split they came from


def parity_images(run: Run, quiet: bool = False, limit: int = PARITY_IMAGES) -> ImageSet:
    """Up to `limit` validation images (the training split if the run kept none back)."""
    splits = _run_splits(run)
    if len(splits.val):
        return _decode(run, _sample(splits.val, limit), "validation split", quiet)
    logger.warning("parity is checked on training images: the run has no validation split")
    return _decode(run, _sample(splits.train, limit), "training split (no validation)", quiet)


def calibration_images(
    run: Run, quiet: bool = False, limit: int = CALIBRATION_IMAGES
) -> np.ndarray:
    """Up to `limit` training images, for int8 calibration (never the validation images)."""
    return _decode(run, _sample(_run_splits(run).train, limit), "training split", quiet).pixels


def _run_splits(run: Run) -> DataSplits:
    try:
        return load_run_splits(config_from_dict(run.info.config))
    except UserError as error:
        raise UserError(
            f"export checks every format on the run's own images, and they cannot be loaded: "
            f"{error}"
        ) from None


def _sample(images: LabeledImages, limit: int) -> LabeledImages:
    """A fixed random subset (seed 0), in split order, so every export sees the same images."""
    if len(images) <= limit:
        return images
    chosen = np.sort(np.random.default_rng(0).permutation(len(images))[:limit])
    return images.subset(chosen)


def _decode(run: Run, images: LabeledImages, source: str, quiet: bool) -> ImageSet:
    decoded = decode_split(
        images, run.info.preprocessing, description=f"decoding {source}", quiet=quiet
    )
    if decoded.pixels is None or len(decoded.kept) == 0:
        raise UserError(f"export found no readable images in the run's {source}")
    return ImageSet(decoded.pixels, images.labels[decoded.kept], source)

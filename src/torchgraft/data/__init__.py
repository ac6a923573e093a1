"""Data: sources, decoding, transforms and loaders."""

from torchgraft.data.cache import CACHE_MODES, DecodedSplit, Skipped, decode_split
from torchgraft.data.decode import (
    UnreadableImage,
    array_to_tensor,
    decode_file,
    load_image,
    pil_to_tensor,
)
from torchgraft.data.loaders import CachedImageDataset, ImageDataset, make_loader, split_datasets
from torchgraft.data.sources import (
    BUNDLED_SETS,
    DataSplits,
    LabeledImages,
    load_data,
    load_display_names,
    stratified_split,
)
from torchgraft.data.splits import load_run_splits
from torchgraft.data.transforms import (
    augmentation,
    eval_transform,
    resize_transform,
    train_transform,
)

__all__ = [
    "BUNDLED_SETS",
    "CACHE_MODES",
    "CachedImageDataset",
    "DataSplits",
    "DecodedSplit",
    "ImageDataset",
    "LabeledImages",
    "Skipped",
    "UnreadableImage",
    "array_to_tensor",
    "augmentation",
    "decode_file",
    "decode_split",
    "eval_transform",
    "load_data",
    "load_display_names",
    "load_image",
    "load_run_splits",
    "make_loader",
    "pil_to_tensor",
    "resize_transform",
    "split_datasets",
    "stratified_split",
    "train_transform",
]

"""Data: sources, decoding, transforms and loaders."""

from torchgraft.data.decode import array_to_tensor, load_image, pil_to_tensor
from torchgraft.data.loaders import ImageDataset, make_loader
from torchgraft.data.sources import (
    BUNDLED_SETS,
    DataSplits,
    LabeledImages,
    load_data,
    load_display_names,
    stratified_split,
)
from torchgraft.data.transforms import eval_transform, resize_transform, train_transform

__all__ = [
    "BUNDLED_SETS",
    "DataSplits",
    "ImageDataset",
    "LabeledImages",
    "array_to_tensor",
    "eval_transform",
    "load_data",
    "load_display_names",
    "load_image",
    "make_loader",
    "pil_to_tensor",
    "resize_transform",
    "stratified_split",
    "train_transform",
]

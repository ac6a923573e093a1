"""Training data held in memory: arrays, tensors, torch Datasets and Hugging Face datasets.

`hold(data)` turns them into one labelled set and returns the name a run's config records,
`memory:<fingerprint>`. From there they take the folder's road: the same stratified split,
decoded-image cache and run directory. The set lives as long as this process, so the
evaluation, export and prediction that follow in the same session find it; a new process
cannot, and `load_held` says what to do instead.

What is accepted, and how it becomes images:
- `(images, labels)`: NumPy arrays or tensors. Images uint8, or float read as values in
  [0, 1] (as `predict` reads them); shaped (N, H, W), (N, H, W, C) or (N, C, H, W), C in
  1, 3, 4. uint8 (N, H, W[, C]) arrays are used without a copy. Labels are integers (class
  i is named "i", or `class_names[i]`) or strings (the class names, sorted).
- A torchvision `ImageFolder` (any dataset with `.samples` and `.classes`): its files, so
  they are decoded, cached and audited like a folder's; its `transform` is not used
  (torchgraft's preprocessing and augmentation apply).
- Any other map-style Dataset of (image, label) pairs, the image a PIL image, tensor or array.
- A Hugging Face `datasets.Dataset` with an Image column and a ClassLabel (or integer or
  string) label column.
The last two are read once, here; their images must share one size (else save them to a
folder, which may mix sizes).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchgraft.data.decode import to_uint8
from torchgraft.data.sources import DataSplits, LabeledImages, hash_split, stratified_split
from torchgraft.errors import UserError
from torchgraft.progress import progress

MEMORY_PREFIX = "memory:"

# source name -> (every image with its label, class names, channels)
_HELD: dict[str, tuple[LabeledImages, list[str], int]] = {}


def is_in_memory(data: object) -> bool:
    """Whether `data` is something `hold` takes, rather than a folder or a bundled name."""
    return data is not None and not isinstance(data, str | Path)


def hold(data: Any, class_names: Sequence[str] | None = None, quiet: bool = False) -> str:
    """Keep `data` for this process's runs; returns the source name their configs record."""
    everything, names = _labelled(data, class_names, quiet)
    channels = 1 if isinstance(everything.images, np.ndarray) and everything.images.ndim == 3 else 3
    digest = hashlib.sha256("\n".join(names).encode())
    hash_split(digest, everything)
    name = MEMORY_PREFIX + digest.hexdigest()[:16]
    _HELD[name] = (everything, names, channels)
    return name


def load_held(name: str, val_fraction: float, seed: int) -> DataSplits:
    """The splits of a held set, split as a folder would be."""
    if name not in _HELD:
        raise UserError(
            f"the data source {name} was images held in memory (arrays or a Dataset passed to "
            "api.train) by the Python process that trained this run; they are not in this "
            "one. Pass the same data again in Python (api.train(data, ...)), or save the "
            "images to a folder of class folders and train on that folder."
        )
    everything, names, channels = _HELD[name]
    train_index, val_index = stratified_split(everything.labels, val_fraction, seed)
    images, native_size = everything.images, None
    if isinstance(images, np.ndarray) and images.shape[1] == images.shape[2]:
        native_size = int(images.shape[1])  # as for the bundled sets: a default image size
    return DataSplits(
        source=name,
        class_names=names,
        train=everything.subset(train_index),
        val=everything.subset(val_index),
        channels=channels,
        native_size=native_size,
    )


def _labelled(
    data: Any, class_names: Sequence[str] | None, quiet: bool
) -> tuple[LabeledImages, list[str]]:
    if isinstance(data, tuple) and len(data) == 2:
        images = image_array(data[0])
        labels, names = label_indices(data[1], class_names)
        if len(labels) != len(images):
            raise UserError(f"{len(images)} images but {len(labels)} labels: pass one per image")
        return LabeledImages(images, labels), names
    if hasattr(data, "samples") and hasattr(data, "classes"):  # torchvision's DatasetFolder
        paths = [Path(path) for path, _ in data.samples]
        labels = np.array([target for _, target in data.samples], dtype=np.int64)
        return LabeledImages(paths, labels), list(class_names or data.classes)
    if type(data).__module__.split(".")[0] == "datasets":  # Hugging Face, without importing it
        return _hugging_face(data, class_names, quiet)
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        pairs = (data[index] for index in range(len(data)))
        known = class_names or getattr(data, "classes", None)
        return _pairs(pairs, len(data), list(known) if known else None, quiet)
    raise UserError(
        f"cannot train on a {type(data).__name__}: pass a folder, a bundled set name, "
        "(images, labels) arrays or tensors, a torch Dataset of (image, label) pairs, or a "
        "Hugging Face datasets.Dataset"
    )


def image_array(images: Any) -> np.ndarray:
    """(N, H, W[, C]) uint8 from arrays or tensors in any of the accepted layouts."""
    array = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else images
    array = np.asarray(array)
    if array.ndim == 4 and array.shape[1] in (1, 3, 4) and array.shape[3] not in (1, 3, 4):
        array = array.transpose(0, 2, 3, 1)  # (N, C, H, W), as torch holds images: a view
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim not in (3, 4) or (array.ndim == 4 and array.shape[3] not in (3, 4)):
        raise UserError(
            f"images of shape {tuple(np.shape(images))}: expected (N, H, W), (N, H, W, C) or "
            "(N, C, H, W) with C = 1, 3 or 4"
        )
    return to_uint8(array)


def label_indices(labels: Any, class_names: Sequence[str] | None) -> tuple[np.ndarray, list[str]]:
    """Integer labels and the class names they index, from integer or string labels."""
    values = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else labels
    values = np.asarray(values)
    if values.dtype.kind in "iu":
        count = int(values.max()) + 1 if len(values) else 0
        names = list(class_names) if class_names is not None else [str(i) for i in range(count)]
        if len(values) and (values.min() < 0 or count > len(names)):
            raise UserError(
                f"labels run from {values.min()} to {values.max()} but there are "
                f"{len(names)} class names: labels must index the class names"
            )
        return values.astype(np.int64), names
    texts = [str(value) for value in values.tolist()]
    names = list(class_names) if class_names is not None else sorted(set(texts))
    unknown = sorted(set(texts) - set(names))
    if unknown:
        raise UserError(f"labels {unknown[:5]} are not among the class names {names[:10]}")
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[text] for text in texts], dtype=np.int64), names


def _pairs(
    pairs: Any, count: int, class_names: Sequence[str] | None, quiet: bool
) -> tuple[LabeledImages, list[str]]:
    """Read (image, label) pairs once into one array and their labels."""
    images, labels = [], []
    for index, pair in enumerate(progress(pairs, total=count, desc="reading", quiet=quiet)):
        if not (isinstance(pair, tuple | list) and len(pair) == 2):
            raise UserError(
                f"item {index} of the dataset is a {type(pair).__name__}, not an (image, label) "
                "pair; for arrays of images and labels pass a tuple: api.train((images, labels))"
            )
        images.append(_one_image(pair[0]))
        labels.append(pair[1].item() if isinstance(pair[1], torch.Tensor) else pair[1])
    shapes = {image.shape for image in images}
    if len(shapes) > 1 and {len(shape) for shape in shapes} == {2, 3}:  # grey and colour
        images = [np.stack([image] * 3, axis=-1) if image.ndim == 2 else image for image in images]
        shapes = {image.shape for image in images}
    if len(shapes) > 1:
        raise UserError(
            f"the dataset's images come in {len(shapes)} sizes (e.g. {sorted(shapes)[:2]}); "
            "images held in memory must share one. Save them to a folder of class folders, "
            "which may mix sizes, and train on the folder."
        )
    label_array, names = label_indices(labels, class_names)
    return LabeledImages(image_array(np.stack(images)), label_array), names


def _one_image(image: Any) -> np.ndarray:
    """(H, W) or (H, W, C) from a PIL image, a (C, H, W) tensor or an array."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
        if image.ndim == 3 and image.shape[0] in (1, 3, 4):
            image = image.transpose(1, 2, 0)
    elif hasattr(image, "convert"):  # PIL: palettes and 16-bit modes as decoding reads them
        image = image.convert("RGB" if image.mode not in ("L", "RGB", "RGBA") else image.mode)
    array = np.asarray(image)
    return array[..., 0] if array.ndim == 3 and array.shape[2] == 1 else array


def _hugging_face(
    dataset: Any, class_names: Sequence[str] | None, quiet: bool
) -> tuple[LabeledImages, list[str]]:
    """A datasets.Dataset: its first Image column, and its ClassLabel (else `label`) column."""
    features = dataset.features
    image_column = next(
        (name for name, kind in features.items() if type(kind).__name__ == "Image"), None
    )
    label_column = next(
        (name for name, kind in features.items() if type(kind).__name__ == "ClassLabel"),
        "label" if "label" in features else None,
    )
    if image_column is None or label_column is None:
        raise UserError(
            f"a Hugging Face dataset with columns {list(features)}: expected an Image column "
            "and a ClassLabel (or 'label') column"
        )
    names = class_names or getattr(features[label_column], "names", None)
    rows = ((row[image_column], row[label_column]) for row in dataset)
    return _pairs(rows, len(dataset), names, quiet)

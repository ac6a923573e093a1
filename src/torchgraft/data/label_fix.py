"""Corrected labels: `graft doctor DATA --deep --fix labels.csv`.

`write_fixed_labels(splits, corrections, path)` writes a CSV label file naming every image of
the audited data, readable or not, with the class the deep audit suggests in place of the
given one for each label issue, so that `graft train labels.csv` trains on the corrected
labels. It never moves, renames or deletes an image and never overwrites a file: the CSV is
a new file, written atomically.

Paths are relative to the CSV's own folder, as the label-file source reads them (absolute
where no relative path reaches the file: another drive). The `split` column is written
whenever the data has validation images, also for an automatic split (class folders only, a
label file without a split column): there it holds the split training drew with the audit's
val_fraction and seed. Without it, training would draw again from the corrected labels, and
`stratified_split` permutes each class's members from one random stream, so changing one
label changes which images of every class land in val: the corrected run would be measured
on other images than the run before it. With no validation images (val_fraction 0) there is
no column, and training draws its own split.

Columns other than path, label and split of a CSV source are not carried over.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath

import numpy as np

from torchgraft.artifact import atomic_write_bytes
from torchgraft.data.audit import image_name
from torchgraft.data.sources import DataSplits, data_folder, printable
from torchgraft.errors import UserError

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
_NAMES_SHOWN = 3  # file names a refusal quotes


@dataclass(frozen=True)
class FixedLabels:
    """The label file `--fix` wrote."""

    path: str  # as given
    images: int  # its rows: every image of every split
    corrected: int  # rows whose label is now the suggested class
    split_column: bool  # False: training draws the split (the data had no validation images)


@dataclass(frozen=True)
class _Row:
    name: str  # as the audit report names the image (relative to the data folder)
    path: str  # as the CSV names it (relative to the CSV's folder)
    label: str
    split: str
    corrected: bool


def check_fix_target(path: Path, splits: DataSplits) -> None:
    """Refuse a label file that could not be written, before the audit spends minutes: not
    a .csv name, a file that exists, a bundled set (no files to name), names not UTF-8."""
    if path.suffix.lower() != ".csv":
        raise UserError(
            f"--fix {path}: the corrected labels are a CSV file; give it a name ending in .csv"
        )
    if isinstance(splits.train.images, np.ndarray):
        raise UserError(
            f"--fix {path}: {splits.source} is a bundled set of in-memory images, with no files "
            "a label file could name. Fix the labels of a folder or a label file instead."
        )
    if path.exists() or path.is_symlink():
        raise UserError(
            f"--fix {path}: the file exists, and --fix never overwrites a file; pass another "
            f"name, e.g. --fix {_free_name(path)}"
        )
    _refuse_unnamable(path, splits)


def write_fixed_labels(
    splits: DataSplits, corrections: Mapping[str, str], path: Path
) -> FixedLabels:
    """Write `splits` as a CSV label file at `path`, each file `corrections` names (as the
    audit names it) labelled with the class it maps to."""
    check_fix_target(path, splits)
    rows = _rows(splits, corrections, path.parent)
    unknown = sorted(set(corrections) - {row.name for row in rows})
    if unknown:
        raise UserError(
            f"--fix {path}: {len(unknown)} corrected file(s) are not in {splits.source}, e.g. "
            f"{unknown[0]}; the corrections must come from an audit of this data"
        )
    split_column = len(splits.val) > 0
    atomic_write_bytes(path, _csv_text(rows, split_column).encode("utf-8"))
    fixed = FixedLabels(str(path), len(rows), sum(row.corrected for row in rows), split_column)
    logger.info(
        "wrote %d images to %s, %d of them with a corrected label", fixed.images, path,
        fixed.corrected,
    )  # fmt: skip
    return fixed


def _rows(splits: DataSplits, corrections: Mapping[str, str], folder: Path) -> list[_Row]:
    """Every image of every split, in the source's order, labelled as corrected."""
    root = data_folder(splits.source)
    rows = []
    for split_name in SPLITS:
        split = getattr(splits, split_name)
        if split is None:
            continue
        for index, (image, label) in enumerate(zip(split.images, split.labels, strict=True)):
            name = image_name(splits, split_name, index, root)
            given = splits.class_names[label]
            suggested = corrections.get(name, given)
            path = _relative_path(Path(image), folder)
            rows.append(_Row(name, path, suggested, split_name, suggested != given))
    return rows


def _relative_path(image: Path, folder: Path) -> str:
    """`image` as a path from `folder` that the operating system resolves to it.

    The plain relative path first (it keeps a symlinked data folder's name); where `folder`
    sits under a symlink, ".." climbs out of the link's target instead, so then the path
    between the resolved folders (the image's own name kept: a symlinked file stays itself).
    """
    target = os.path.realpath(image)
    candidates = (
        (os.path.abspath(image), os.path.abspath(folder)),
        (os.path.join(os.path.realpath(image.parent), image.name), os.path.realpath(folder)),
    )
    for path, start in candidates:
        try:
            relative = os.path.relpath(path, start)
        except ValueError:  # another drive (Windows): no relative path exists
            break
        if os.path.realpath(os.path.join(folder, relative)) == target:
            return PurePath(relative).as_posix()
    return PurePath(os.path.abspath(image)).as_posix()


def _csv_text(rows: list[_Row], split_column: bool) -> str:
    buffer = io.StringIO()
    # Quoting as needed: commas, quotes and line breaks in file names survive the reader.
    # The default "\r\n" line ends (RFC 4180), as with "\n" a "\r" in a name goes unquoted.
    writer = csv.writer(buffer)
    writer.writerow(["path", "label", "split"] if split_column else ["path", "label"])
    for row in rows:
        writer.writerow([row.path, row.label, row.split] if split_column else [row.path, row.label])
    return buffer.getvalue()


def _refuse_unnamable(path: Path, splits: DataSplits) -> None:
    """A file name that is not UTF-8 cannot be written into a UTF-8 CSV, and the label-file
    reader refuses any other encoding: leaving the file out would drop it from training."""
    unnamable = [
        printable(str(image))
        for split_name in SPLITS
        if getattr(splits, split_name) is not None
        for image in getattr(splits, split_name).images
        if not _is_utf8(str(image))
    ]
    if unnamable:
        raise UserError(
            f"--fix {path}: {len(unnamable)} file name(s) are not UTF-8 and cannot be written "
            f"to a CSV: {', '.join(unnamable[:_NAMES_SHOWN])}; rename them (e.g. with "
            "convmv) and run again"
        )


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # the lone surrogates of undecodable bytes
        return False
    return True


def _free_name(path: Path) -> Path:
    """`path` with -2, -3, ... before the suffix: the first name that is not taken."""
    number = 2
    while (candidate := path.with_name(f"{path.stem}-{number}{path.suffix}")).exists():
        number += 1
    return candidate

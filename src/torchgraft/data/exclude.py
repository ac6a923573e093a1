"""Leaving files out of training: `data.exclude` (`graft train DATA --exclude FILE`).

`read_exclusions(path)` reads a list into the names of the files to drop; `drop_files`
removes them from every split. The list is `graft doctor DATA --json` output or a CSV:

- From a doctor JSON: every file under `label_issues`, `outliers`, `unreadable` and
  `blank_images`; and of each group of copies (`exact_duplicates`, `near_duplicates`, and
  the `semantic_duplicates` that span splits; groups that share a file count as one group),
  every copy but one. Semantic groups within one split are left alone: the network finds
  different pictures of simple shapes (hand-written 1s) as alike as copies, so only a
  leak is worth an image.
  The copy kept is, in this order of preference: one not dropped for a reason above; one in
  val or test when the copies span splits (so training no longer holds a copy of an
  evaluation image); the first listed. `tiny_images` are kept: a note about resolution, not
  a wrong file. A report that lists nothing leaves the data as it is.
- From a CSV: the column named `file` (or `path`), else the first column. The header is
  optional: a first row is one when it names such a column or when its first cell is not an
  image file name. A byte-order mark (Excel's UTF-8) is tolerated.

Names are relative to the data folder, as doctor prints them, or absolute. They match the
data's files by resolved folder and file name (a symlinked file stays itself, so two links to
one image are two copies). A listed file that is not in the data (it may have changed since
doctor ran) is counted in one warning, not an error. The data fingerprint is of the files
left, so a resume on a list that changed warns as other data changes do.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from torchgraft.data.audit import linked_groups
from torchgraft.data.sources import IMAGE_EXTENSIONS, DataSplits, data_folder, printable
from torchgraft.errors import UserError

logger = logging.getLogger(__name__)

DROPPED_KEYS = ("label_issues", "outliers", "unreadable", "blank_images")  # {file, ...} entries
GROUP_KEYS = ("exact_duplicates", "near_duplicates", "semantic_duplicates")  # {files, splits}
EVALUATION_SPLITS = ("val", "test")
NAME_COLUMNS = ("file", "path")
_HOW_TO_WRITE = "write one with `graft doctor DATA --json > issues.json`, or list files in a CSV"


def apply_exclusions(splits: DataSplits, path: str | Path) -> DataSplits:
    """`splits` without the files that `path` (a doctor JSON or a CSV) lists."""
    if isinstance(splits.train.images, np.ndarray):
        raise UserError(
            f"--exclude {path}: {splits.source} is a bundled set of in-memory images, with no "
            "files to leave out. Exclude files from a folder or a label file instead."
        )
    return drop_files(splits, read_exclusions(path), path)


def read_exclusions(path: str | Path) -> set[str]:
    """The names of the files to drop, as `path` lists them (rules: the module docstring)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".csv"):
        raise UserError(
            f"--exclude {path}: expected a doctor report (.json) or a CSV (.csv); {_HOW_TO_WRITE}."
        )
    text = _read_text(path)
    if suffix == ".csv":
        return _from_csv(path, text)
    return _from_report(path, _parse_json(path, text))


def drop_files(splits: DataSplits, names: set[str], listed_in: str | Path) -> DataSplits:
    """`splits` without the files `names` names (relative to the data folder, or absolute)."""
    root = data_folder(splits.source)
    wanted = {_match_key(root / name): name for name in names}
    kept: dict[str, Any] = {}
    found: set[str] = set()
    for split_name in ("train", "val", "test"):
        split = getattr(splits, split_name)
        if split is None:
            continue
        keys = [_match_key(image) for image in split.images]
        found.update(key for key in keys if key in wanted)
        kept[split_name] = split.subset(np.flatnonzero([key not in wanted for key in keys]))
        _refuse_empty(split_name, kept[split_name], listed_in)
    dropped = {name: len(getattr(splits, name)) - len(kept[name]) for name in kept}
    logger.info(
        "excluding %d file(s) listed in %s: %s", sum(dropped.values()), listed_in,
        ", ".join(f"{count} {name}" for name, count in dropped.items()),
    )  # fmt: skip
    _warn_absent([name for key, name in wanted.items() if key not in found], listed_in, root)
    return dataclasses.replace(splits, **kept, excluded=sum(dropped.values()))


def _match_key(path: Path) -> str:
    # The folder is resolved (relative or absolute names, a symlinked data folder) but not
    # the file name: two links to one image are two files of the data. `printable` because
    # doctor writes a name that is not UTF-8 with \xNN escapes.
    return printable(os.path.join(os.path.realpath(path.parent), path.name))


def _refuse_empty(split_name: str, left: Any, listed_in: str | Path) -> None:
    if len(left) == 0:
        raise UserError(
            f"--exclude {listed_in} leaves no images in the {split_name} split: check that "
            "the list was written for this data, or remove some of its files."
        )


def _warn_absent(absent: list[str], listed_in: str | Path, root: Path) -> None:
    """One warning for listed files the data does not hold (it changed since doctor ran)."""
    if absent:
        logger.warning(
            "%d file(s) listed in %s are not in the data (names are relative to %s, or "
            "absolute), e.g. %s; the data may have changed since the list was written",
            len(absent), listed_in, root, printable(sorted(absent)[0]),
        )  # fmt: skip


def _read_text(path: Path) -> str:
    try:
        # utf-8-sig: a byte-order mark (Excel's UTF-8 CSVs) would otherwise join the first name.
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"--exclude {path}: no such file; {_HOW_TO_WRITE}.") from None
    except UnicodeDecodeError:
        raise UserError(f"--exclude {path}: not UTF-8 text; save it as UTF-8.") from None
    except OSError as error:
        raise UserError(f"--exclude {path}: cannot read it ({error.strerror}).") from None
    if not text.strip():
        # A failed `graft doctor --json > issues.json` leaves an empty file behind.
        raise UserError(f"--exclude {path}: the file is empty; {_HOW_TO_WRITE}.")
    return text


def _parse_json(path: Path, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"--exclude {path}: not valid JSON ({error}); {_HOW_TO_WRITE}.") from None


def _from_report(path: Path, report: Any) -> set[str]:
    """Files a doctor report finds wrong, and all copies but one of each duplicate group."""
    if not isinstance(report, dict) or not any(k in report for k in DROPPED_KEYS + GROUP_KEYS):
        raise UserError(
            f"--exclude {path}: not a graft doctor report (no {', '.join(DROPPED_KEYS)} or "
            f"duplicate groups in it); {_HOW_TO_WRITE}."
        )
    dropped = {
        _entry_text(path, key, index, entry, "file")
        for key in DROPPED_KEYS
        for index, entry in _entries(path, report, key)
    }
    for group in _joined(_groups(path, report)):
        keep = _keeper(group, dropped)
        dropped.update(file for file, _ in group if file != keep)
    if not dropped:
        logger.info("%s lists nothing to exclude: training on every file", path)
    return dropped


def _entries(path: Path, report: dict[str, Any], key: str) -> list[tuple[int, Any]]:
    entries = report.get(key) or []
    if not isinstance(entries, list):
        raise UserError(f"--exclude {path}: '{key}' should be a list, got {entries!r}.")
    return list(enumerate(entries))


def _entry_text(path: Path, key: str, index: int, entry: Any, field: str) -> str:
    value = entry.get(field) if isinstance(entry, dict) else None
    if not isinstance(value, str) or not value:
        raise UserError(f"--exclude {path}: {key}[{index}] names no '{field}', got {entry!r}.")
    return value


def _groups(path: Path, report: dict[str, Any]) -> list[list[tuple[str, str]]]:
    """Each duplicate group as (file, split) pairs; split "" where the report has none."""
    groups = []
    for key in GROUP_KEYS:
        for index, entry in _entries(path, report, key):
            files = entry.get("files") if isinstance(entry, dict) else None
            if not isinstance(files, list) or not all(isinstance(f, str) and f for f in files):
                raise UserError(f"--exclude {path}: {key}[{index}] has no list of 'files'.")
            splits = entry.get("splits")
            if not isinstance(splits, list) or len(splits) != len(files):
                splits = [""] * len(files)
            if key == "semantic_duplicates" and len(set(splits) - {""}) < 2:
                continue  # not a leak (see the module's docstring)
            groups.append([(file, str(split)) for file, split in zip(files, splits, strict=True)])
    return groups


def _joined(groups: list[list[tuple[str, str]]]) -> list[list[tuple[str, str]]]:
    """Groups that share a file, joined (audit.linked_groups), files in order of first
    appearance, each with the first split a group gave it.

    Exact copies are also near copies, and semantic groups overlap both: choosing a copy to
    keep per listed group could drop, through another group, the copy this one kept.
    """
    number: dict[str, int] = {}  # file -> its order of first appearance
    split_of: dict[str, str] = {}
    links: list[tuple[int, int, float]] = []
    for group in groups:
        for file, split in group:
            number.setdefault(file, len(number))
            split_of[file] = split_of.get(file) or split
            links.append((number[group[0][0]], number[file], 0.0))  # the first links to itself
    files = list(number)
    return [
        [(files[member], split_of[files[member]]) for member in members]
        for members, _ in linked_groups(links)
    ]


def _keeper(group: list[tuple[str, str]], dropped: set[str]) -> str:
    """The copy to keep: not dropped otherwise, then in val/test if the copies span splits,
    then the first (min keeps the first of equals)."""
    spans = len({split for _, split in group}) > 1

    def preference(copy: tuple[str, str]) -> tuple[bool, bool]:
        file, split = copy
        return file in dropped, not (spans and split in EVALUATION_SPLITS)

    return min(group, key=preference)[0]


def _from_csv(path: Path, text: str) -> set[str]:
    """The `file` (or `path`) column, else the first; the header is optional."""
    rows = [row for row in csv.reader(text.splitlines()) if any(cell.strip() for cell in row)]
    header = [cell.strip().lower() for cell in rows[0]] if rows else [""]
    column = next((header.index(name) for name in NAME_COLUMNS if name in header), None)
    if column is None and Path(header[0]).suffix in IMAGE_EXTENSIONS:
        column, body = 0, rows  # no header: the first row already names a file
    else:
        column, body = column or 0, rows[1:]
    names = {row[column].strip() for row in body if len(row) > column and row[column].strip()}
    if not names:
        raise UserError(
            f"--exclude {path}: names no files; list one file per row, in a column named "
            "file or path, or in the first column."
        )
    return names

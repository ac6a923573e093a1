"""The data audit behind `graft doctor`: what in a dataset will hurt training, before training.

`audit(source)` decodes and fingerprints every image (in worker processes, a chunk of files
per round trip) through training's decoder, with the channels the model would get, and
reports: images per class and split, unreadable files and why, blank (constant) images, groups
of exact and near duplicates, duplicates across splits (validation leaking training data),
class imbalance with suggested class weights, classes missing from a split, images tiny for
the model's input size, and the colour modes and sizes in use. Where the train/val split is
automatic (a folder of class folders, a bundled set) every image is audited as one split,
"all": a duplicate there can land on both sides of the split.

A finding is a problem (exit status 1 from `graft doctor`) when a user should act on it:
unreadable, blank or tiny images, copies that leak across splits or carry different labels,
imbalance, missing classes. Copies within one split with one label, and the modes and sizes,
are notes.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from torchgraft.data.hashing import (
    THUMBNAIL_TOLERANCE,
    Fingerprint,
    fingerprint_arrays,
    fingerprint_files,
    near_duplicate_pairs,
    thumbnail_distance,
)
from torchgraft.data.sources import (
    BUNDLED_SETS,
    VAL_FOLDER_NAMES,
    DataSplits,
    data_folder,
    load_data,
    printable,
)
from torchgraft.errors import UserError
from torchgraft.progress import progress

if TYPE_CHECKING:
    from torchgraft.artifact import Preprocessing
    from torchgraft.data.label_fix import FixedLabels

logger = logging.getLogger(__name__)

AUTO_SPLIT = "all"  # the one audited split when train/val are drawn automatically
CATEGORIES = (
    "unreadable", "blank images", "exact duplicates", "near duplicates", "leakage",
    "label issues", "semantic duplicates", "outliers",  # --deep
    "imbalance", "missing classes", "tiny images", "modes and sizes",
)  # fmt: skip
# An image whose every channel varies by less than one grey level (standard deviation) is
# blank or constant: nothing to learn from, and its normalised thumbnail is noise, so blank
# images are a finding of their own and left out of the duplicate groups.
BLANK_SPREAD = 1.0
# Images are tiny when the model sees them upscaled more than this many times.
TINY_UPSCALE = 4
# A perceptual hash compares 9x8 pixels; images with a side shorter than 8 pixels all look
# alike to it, so they are left out of the near-duplicate groups.
_HASHABLE_SIDE = 8
_FILES_SHOWN = 6  # files named per duplicate group in a report line; --json lists them all


@dataclass(frozen=True)
class UnreadableFile:
    """A file training will skip."""

    file: str  # relative to the data folder
    split: str
    class_name: str
    reason: str  # e.g. "empty file (0 bytes)"


@dataclass(frozen=True)
class CopyGroup:
    """Copies of one image, each with the split it is used in and the class it is labelled
    as: the pixel-level Duplicates here, the deep audit's semantic ones."""

    files: list[str]  # relative to the data folder
    splits: list[str]  # the split each copy is used in (train, val, test)
    classes: list[str]  # the class each copy is labelled as

    @property
    def leaks(self) -> bool:
        """True when the copies sit in different splits."""
        return len(set(self.splits)) > 1

    @property
    def spans(self) -> list[str]:
        """The splits the copies are used in, each once, in order of appearance."""
        return list(dict.fromkeys(self.splits))

    @property
    def conflicting_labels(self) -> bool:
        """True when the copies are labelled as different classes."""
        return len(set(self.classes)) > 1


@dataclass(frozen=True)
class Duplicates(CopyGroup):
    """An exact group (same bytes) or a near group (similar pictures, every pair linked
    through a chain of similar pairs)."""

    distance: int  # largest perceptual hash distance of a linked pair; 0 for exact duplicates


def copy_group_dicts(groups: Sequence[CopyGroup]) -> list[dict[str, Any]]:
    """Plain data for JSON: each group's fields, plus whether it leaks and the splits it spans."""
    return [
        {**dataclasses.asdict(group), "leaks": group.leaks, "spans": group.spans}
        for group in groups
    ]


@dataclass(frozen=True)
class BlankImage:
    """An image whose pixels are all (nearly) equal."""

    file: str
    split: str
    class_name: str
    spread: float  # largest per-channel standard deviation, grey levels


@dataclass(frozen=True)
class TinyImage:
    file: str
    width: int
    height: int


@dataclass(frozen=True)
class Finding:
    """One line of the report: a problem to fix, or a note (problem=False) worth knowing."""

    category: str  # one of CATEGORIES
    detail: str  # what and where, files named relative to the data folder
    problem: bool = True

    @property
    def line(self) -> str:
        return f"{self.category}: {self.detail}"


class DeepFindings(Protocol):
    """What `graft doctor --deep` adds (evaluate.deep_audit.DeepReport, which needs the
    models this package may not import)."""

    def findings(self) -> list[Finding]: ...

    def to_dict(self) -> dict[str, Any]: ...


@dataclass
class AuditReport:
    """What `audit` found. `problems()` lists the findings to fix; `is_clean` when none."""

    source: str
    automatic_split: bool  # no train/val folders: val is drawn from "all" with seed/val_fraction
    val_fraction: float
    seed: int
    class_names: list[str]
    counts: dict[str, dict[str, int]]  # split -> class -> readable images
    unreadable: list[UnreadableFile]
    exact_duplicates: list[Duplicates]
    near_duplicates: list[Duplicates]
    imbalance_ratio: float | None  # largest / smallest training class (classes with images)
    class_weights: dict[str, float]  # inverse frequency, mean 1: pass to the loss if imbalanced
    missing: dict[str, list[str]]  # split -> classes with no readable images there
    tiny_images: list[TinyImage]
    modes: dict[str, int]  # Pillow mode before conversion -> images
    sizes: dict[str, dict[str, float]]  # width/height -> min/median/max
    max_distance: int  # perceptual hash distance counted as a near duplicate
    min_size: int  # smaller sides than this are tiny
    imbalance_threshold: float  # a largest/smallest class ratio from here on is a problem
    blank_images: list[BlankImage] = dataclasses.field(default_factory=list)
    model: str = ""  # the model the images are judged for
    image_size: int = 0  # its input side length, as training would resize to
    channels: int = 3  # the channels training would decode to
    deep: DeepFindings | None = None  # label issues, semantic duplicates, outliers (--deep)
    label_fix: FixedLabels | None = None  # the corrected label file written (--fix)

    @property
    def is_clean(self) -> bool:
        return not self.problems()

    def problems(self) -> list[str]:
        """One line per problem found, files named relative to the data folder."""
        return [finding.line for finding in self.findings() if finding.problem]

    def findings(self) -> list[Finding]:
        """Every finding, problems and notes, in the order of CATEGORIES."""
        return [
            *_unreadable_findings(self),
            *_blank_findings(self),
            *_duplicate_findings(self),
            *(self.deep.findings() if self.deep is not None else []),
            *_imbalance_findings(self),
            *_missing_findings(self),
            *_tiny_findings(self),
            *_mode_and_size_notes(self),
        ]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON: every field, plus is_clean, problems and notes. With --deep,
        `label_issues`, `semantic_duplicates` and `outliers` are top-level keys beside the
        others, and `deep` holds how they were found."""
        deep = self.deep.to_dict() if self.deep is not None else None
        data = dataclasses.asdict(dataclasses.replace(self, deep=None))
        if deep is not None:
            for key in ("label_issues", "semantic_duplicates", "outliers"):
                data[key] = deep.pop(key)
            data["deep"] = deep
        for key in ("exact_duplicates", "near_duplicates"):
            data[key] = copy_group_dicts(getattr(self, key))
        data["problems"] = self.problems()
        data["is_clean"] = not data["problems"]
        data["notes"] = [finding.line for finding in self.findings() if not finding.problem]
        return data


@dataclass(frozen=True)
class _Item:
    """One image to examine: its name in the report, its splits and its class."""

    name: str
    split: str  # audited split: train/val/test, or "all" for an automatic split
    used_in: str  # where training uses it: train, val or test
    label: int


def audit(
    source: str,
    val_fraction: float = 0.2,
    seed: int = 0,
    workers: int = 2,
    quiet: bool = False,
    max_distance: int = 4,
    min_size: int | None = None,
    imbalance_threshold: float = 3.0,
    model: str | None = None,
    image_size: int | None = None,
) -> AuditReport:
    """Audit a data source (a folder or a bundled set name) for problems that hurt training.

    `val_fraction` and `seed` are those training will use, so the report can say which
    duplicates land on both sides of an automatic split. `model` and `image_size` are those
    training will use (None: training's defaults): images are decoded to the channels that
    model gets, and are tiny with a side under `min_size` (None: a quarter of the input
    size). `workers` processes decode and hash (0: in this process).
    """
    _check_settings(val_fraction, workers, max_distance, min_size, image_size)
    data = load_data(source, val_fraction=val_fraction, seed=seed)
    model_name, preprocessing = _training_input(model, image_size, data)
    if min_size is None:
        min_size = math.ceil(preprocessing.image_size / TINY_UPSCALE)
    automatic = _is_automatic_split(source)
    items, images = _items(data, automatic)
    logger.info("auditing %d images from %s", len(items), source)
    with progress(total=len(items), desc="auditing", unit="image", quiet=quiet, leave=True) as bar:
        if isinstance(images, np.ndarray):
            scans = fingerprint_arrays(images, bar.update)
        else:
            scans = fingerprint_files(images, workers, bar.update, preprocessing.channels)
    splits = [AUTO_SPLIT] if automatic else _split_names(data)
    counts = _counts(items, scans, splits, data.class_names)
    ratio, weights = _imbalance(counts[splits[0]])
    readable = [scan for scan in scans if scan.reason is None]
    blank = {i for i, scan in enumerate(scans) if scan.reason is None and _is_blank(scan)}
    return AuditReport(
        source=source,
        automatic_split=automatic,
        val_fraction=val_fraction,
        seed=seed,
        class_names=list(data.class_names),
        counts=counts,
        unreadable=_unreadable(items, scans, data.class_names),
        exact_duplicates=_exact_duplicates(items, scans, data.class_names, blank),
        near_duplicates=_near_duplicates(items, scans, data.class_names, max_distance, blank),
        imbalance_ratio=ratio,
        class_weights=weights,
        missing=_missing(counts),
        tiny_images=_tiny(items, scans, min_size),
        modes=dict(Counter(scan.mode for scan in readable).most_common()),
        sizes=_sizes(readable),
        max_distance=max_distance,
        min_size=min_size,
        imbalance_threshold=imbalance_threshold,
        blank_images=_blank(items, scans, data.class_names, blank),
        model=model_name,
        image_size=preprocessing.image_size,
        channels=preprocessing.channels,
    )


def _training_input(
    model: str | None, image_size: int | None, data: DataSplits
) -> tuple[str, Preprocessing]:
    """The model's name and the input size and channels training would use on `data`."""
    from torchgraft.config import DataConfig, ModelConfig
    from torchgraft.models.registry import get_spec
    from torchgraft.train.setup import resolve_preprocessing  # training's own rule, not a copy

    name = model or ModelConfig().name
    return name, resolve_preprocessing(get_spec(name), DataConfig(image_size=image_size), data)


def _check_settings(
    val_fraction: float,
    workers: int,
    max_distance: int,
    min_size: int | None,
    image_size: int | None,
) -> None:
    if not 0.0 <= val_fraction <= 0.9:
        raise UserError(f"val_fraction must be between 0 and 0.9, got {val_fraction}.")
    if workers < 0:
        raise UserError(f"workers must be 0 (no worker processes) or more, got {workers}.")
    if not 0 <= max_distance <= 64:
        raise UserError(f"max_distance must be between 0 and 64 bits, got {max_distance}.")
    if min_size is not None and min_size < 1:
        raise UserError(f"min_size must be at least 1 pixel, got {min_size}.")
    smallest = _smallest_image_size()
    if image_size is not None and image_size < smallest:
        raise UserError(f"image_size must be at least {smallest} pixels, got {image_size}.")


def _smallest_image_size() -> int:
    """Training's own lower bound on image_size (DataConfig's), so the two cannot drift."""
    from torchgraft.config import DataConfig

    (image_size,) = (
        field for field in dataclasses.fields(DataConfig) if field.name == "image_size"
    )
    return int(image_size.metadata["minimum"])


def _is_automatic_split(source: str) -> bool:
    """True when training draws val from the same images: no train/ and val/ folders, no
    split column in a label file, a bundled set."""
    path = Path(source).expanduser()
    if source in BUNDLED_SETS:
        return True
    if path.is_dir():
        has_val = any((path / name).is_dir() for name in VAL_FOLDER_NAMES)
        return not ((path / "train").is_dir() and has_val)
    return len(load_data(source, val_fraction=0.0).val) == 0  # an automatic split is empty


def _split_names(data: DataSplits) -> list[str]:
    return ["train", "val"] + (["test"] if data.test is not None else [])


def _items(data: DataSplits, automatic: bool) -> tuple[list[_Item], list[Path] | np.ndarray]:
    """Every image of every split, named for the report, and the images to decode."""
    root = data_folder(data.source)
    items: list[_Item] = []
    arrays: list[np.ndarray] = []
    paths: list[Path] = []
    for used_in in _split_names(data):
        split = getattr(data, used_in)
        split_name = AUTO_SPLIT if automatic else used_in
        for index, label in enumerate(split.labels.tolist()):
            if not isinstance(split.images, np.ndarray):
                paths.append(split.images[index])
            items.append(_Item(image_name(data, used_in, index, root), split_name, used_in, label))
        if isinstance(split.images, np.ndarray):
            arrays.append(split.images)
    return items, np.concatenate(arrays) if arrays else paths


def image_name(data: DataSplits, used_in: str, index: int, root: Path | None = None) -> str:
    """How the report names image `index` of split `used_in`: its path relative to the data
    folder (`root`, found from the source when None), or its place in a bundled array."""
    split = getattr(data, used_in)
    if isinstance(split.images, np.ndarray):
        return f"{data.source} {used_in} #{index}"
    return printable(_relative(split.images[index], root or data_folder(data.source)))


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _counts(
    items: list[_Item], scans: list[Fingerprint], splits: list[str], class_names: list[str]
) -> dict[str, dict[str, int]]:
    counts = {split: dict.fromkeys(class_names, 0) for split in splits}
    for item, scan in zip(items, scans, strict=True):
        if scan.reason is None:
            counts[item.split][class_names[item.label]] += 1
    return counts


def _unreadable(
    items: list[_Item], scans: list[Fingerprint], class_names: list[str]
) -> list[UnreadableFile]:
    return [
        UnreadableFile(item.name, item.used_in, class_names[item.label], scan.reason)
        for item, scan in zip(items, scans, strict=True)
        if scan.reason is not None
    ]


def _duplicates(
    members: list[int], items: list[_Item], class_names: list[str], distance: int
) -> Duplicates:
    return Duplicates(
        files=[items[i].name for i in members],
        splits=[items[i].used_in for i in members],
        classes=[class_names[items[i].label] for i in members],
        distance=distance,
    )


def _exact_duplicates(
    items: list[_Item], scans: list[Fingerprint], class_names: list[str], blank: set[int]
) -> list[Duplicates]:
    """Groups of readable, non-blank images with the same content digest."""
    groups: dict[str, list[int]] = {}
    for index, scan in enumerate(scans):
        if scan.reason is None and index not in blank:
            groups.setdefault(scan.digest, []).append(index)
    return [_duplicates(g, items, class_names, 0) for g in groups.values() if len(g) > 1]


def _near_duplicates(
    items: list[_Item],
    scans: list[Fingerprint],
    class_names: list[str],
    max_distance: int,
    blank: set[int],
) -> list[Duplicates]:
    """Groups of similar pictures with different content: similar pairs (close hashes,
    confirmed on thumbnails) joined into groups, so N copies are one finding, not N^2/2."""
    comparable = [
        index
        for index, scan in enumerate(scans)
        if scan.reason is None
        and index not in blank
        and min(scan.width, scan.height) >= _HASHABLE_SIDE
    ]
    hashes = np.array([scans[index].phash for index in comparable], dtype=np.uint64)
    links: list[tuple[int, int, int]] = []
    for first, second in near_duplicate_pairs(hashes, max_distance):
        a, b = comparable[first], comparable[second]
        if scans[a].digest == scans[b].digest:
            continue  # an exact duplicate, reported as such
        if thumbnail_distance(scans[a].thumbnail, scans[b].thumbnail) <= THUMBNAIL_TOLERANCE:
            links.append((a, b, int(np.bitwise_count(hashes[first] ^ hashes[second]))))
    groups = [
        _duplicates(members, items, class_names, int(distance))
        for members, distance in linked_groups(links)
    ]
    return sorted(groups, key=lambda group: (group.distance, group.files))


def linked_groups(
    links: Sequence[tuple[int, int, float]],
) -> list[tuple[list[int], float]]:
    """The connected groups of (a, b, distance) links (union-find), each as its sorted members
    and its largest link distance."""
    parent: dict[int, int] = {}

    def root(node: int) -> int:
        parent.setdefault(node, node)
        while parent[node] != node:
            parent[node] = parent[parent[node]]  # path halving keeps the trees flat
            node = parent[node]
        return node

    for a, b, _ in links:
        parent[root(a)] = root(b)
    members: dict[int, list[int]] = {}
    for node in parent:
        members.setdefault(root(node), []).append(node)
    widest: dict[int, float] = {}
    for a, _, distance in links:
        widest[root(a)] = max(widest.get(root(a), 0), distance)
    return [(sorted(group), widest[top]) for top, group in members.items()]


def _is_blank(scan: Fingerprint) -> bool:
    return scan.spread < BLANK_SPREAD


def _blank(
    items: list[_Item], scans: list[Fingerprint], class_names: list[str], blank: set[int]
) -> list[BlankImage]:
    return [
        BlankImage(items[i].name, items[i].used_in, class_names[items[i].label], scans[i].spread)
        for i in sorted(blank)
    ]


def _imbalance(counts: dict[str, int]) -> tuple[float | None, dict[str, float]]:
    """Largest/smallest class ratio and inverse-frequency weights (mean 1), classes with images."""
    present = {name: count for name, count in counts.items() if count > 0}
    if not present:
        return None, {}
    inverse = {name: 1.0 / count for name, count in present.items()}
    mean = sum(inverse.values()) / len(inverse)
    weights = {name: round(value / mean, 3) for name, value in inverse.items()}
    return max(present.values()) / min(present.values()), weights


def _missing(counts: dict[str, dict[str, int]]) -> dict[str, list[str]]:
    """Per split, the classes with no readable images there."""
    absent = {
        split: [n for n, c in per_class.items() if c == 0] for split, per_class in counts.items()
    }
    return {split: names for split, names in absent.items() if names}


def _tiny(items: list[_Item], scans: list[Fingerprint], min_size: int) -> list[TinyImage]:
    return [
        TinyImage(item.name, scan.width, scan.height)
        for item, scan in zip(items, scans, strict=True)
        if scan.reason is None and min(scan.width, scan.height) < min_size
    ]


def _sizes(readable: list[Fingerprint]) -> dict[str, dict[str, float]]:
    if not readable:
        return {}
    sizes = {}
    for side in ("width", "height"):
        values = np.array([getattr(scan, side) for scan in readable])
        sizes[side] = {"min": values.min(), "median": np.median(values), "max": values.max()}
    return {side: {k: float(v) for k, v in stats.items()} for side, stats in sizes.items()}


def _unreadable_findings(report: AuditReport) -> Iterator[Finding]:
    for entry in report.unreadable:
        yield Finding("unreadable", f"{entry.file}: {entry.reason}")


def _blank_findings(report: AuditReport) -> Iterator[Finding]:
    for image in report.blank_images:
        detail = f"every pixel within {image.spread:.2f} grey levels of one value"
        yield Finding("blank images", f"{image.file} (blank or constant: {detail})")


def _duplicate_findings(report: AuditReport) -> Iterator[Finding]:
    for group in report.exact_duplicates:
        yield _duplicate_finding(report, group, exact=True)
    for group in report.near_duplicates:
        yield _duplicate_finding(report, group, exact=False)


def _duplicate_finding(report: AuditReport, copies: Duplicates, exact: bool) -> Finding:
    """Copies are a problem when they leak across splits or disagree on the label; copies
    within one split with one label only weigh an image more, so they are a note."""
    category = "exact duplicates" if exact else "near duplicates"
    files = _group_files(copies.files, " = " if exact else " ~ ")
    where = ("" if exact else f"distance {copies.distance}, ") + "in "
    where += " and ".join(copies.spans)
    labels = sorted(set(copies.classes))
    where += f", labelled {' and '.join(labels)}" if copies.conflicting_labels else ""
    if report.automatic_split:
        where += ", can leak across the automatic train/val split"
        if copies.leaks:
            where += f" and does with val fraction {report.val_fraction}, seed {report.seed}"
    elif copies.leaks:
        trained = "train" in copies.splits
        harm = "the model is scored on what it trained on" if trained else "held-out splits overlap"
        copy = "exact copies" if exact else "near copies"
        return Finding("leakage", f"{copy} {files} ({where}: {harm})")
    problem = copies.leaks or copies.conflicting_labels
    return Finding(category, f"{files} ({where})", problem)


def _group_files(files: list[str], separator: str) -> str:
    shown = separator.join(files[:_FILES_SHOWN])
    hidden = len(files) - _FILES_SHOWN
    return f"{shown} and {hidden} more ({len(files)} files)" if hidden > 0 else shown


def _imbalance_findings(report: AuditReport) -> Iterator[Finding]:
    ratio = report.imbalance_ratio
    if ratio is None or ratio < report.imbalance_threshold:
        return
    counts = {n: c for n, c in next(iter(report.counts.values())).items() if c > 0}
    largest, smallest = max(counts, key=counts.__getitem__), min(counts, key=counts.__getitem__)
    weights = ", ".join(f"{name} {weight:g}" for name, weight in report.class_weights.items())
    yield Finding(
        "imbalance",
        f"{largest} has {counts[largest]} training images, {smallest} "
        f"{counts[smallest]} (ratio {ratio:.1f}, threshold {report.imbalance_threshold:g}); "
        f"add images to the small classes or weight the loss: {weights}",
    )


def _missing_findings(report: AuditReport) -> Iterator[Finding]:
    for split, names in report.missing.items():
        harm = "it cannot be learned" if split in ("train", AUTO_SPLIT) else "it is not measured"
        for name in names:
            found = ", ".join(f"{s} has {c[name]}" for s, c in report.counts.items() if c[name])
            detail = f"{name} has no readable images in {split} ({found or 'nor anywhere'})"
            yield Finding("missing classes", f"{detail}: {harm}")


def _tiny_findings(report: AuditReport) -> Iterator[Finding]:
    model = f" of {report.model}" if report.model else ""
    for image in report.tiny_images:
        size = f"{image.width}x{image.height}, a side under {report.min_size} px"
        if report.image_size:
            size += f" for the {report.image_size} px input{model}"
        yield Finding("tiny images", f"{image.file} ({size})")


def _mode_and_size_notes(report: AuditReport) -> Iterator[Finding]:
    if report.modes:
        modes = ", ".join(f"{mode} {count}" for mode, count in report.modes.items())
        label = "mixed colour modes" if len(report.modes) > 1 else "one colour mode"
        yield Finding("modes and sizes", f"{label} (converted when loaded): {modes}", False)
    if report.sizes:
        sides = [report.sizes[side] for side in ("width", "height")]
        label = "mixed sizes" if any(s["min"] != s["max"] for s in sides) else "one size"
        ranges = [f"{s['min']:g}/{s['median']:g}/{s['max']:g}" for s in sides]
        text = f"{label}: width {ranges[0]}, height {ranges[1]} px (min/median/max)"
        yield Finding("modes and sizes", text, False)

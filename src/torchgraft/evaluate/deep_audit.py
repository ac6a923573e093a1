"""`graft doctor --deep`: the data's mistakes found with the network itself.

On top of the pixel-level audit (data.audit), the images are embedded by the backbone
training would use (evaluate.embeddings) and three questions are asked of the embeddings:
- which labels are wrong: confident learning on out-of-fold probabilities of a linear
  probe (evaluate.label_issues);
- which images are copies of each other, flipped or cropped ones included, and which of
  those copies leak across train, validation and test: cosine similarity of the images'
  trimmed content, each also compared mirrored;
- which images belong to no class: those far from all their nearest neighbours.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from torchgraft.config import RunConfig
from torchgraft.data import DataSplits, load_run_splits
from torchgraft.data.audit import (
    AuditReport,
    CopyGroup,
    Finding,
    copy_group_dicts,
    image_name,
    linked_groups,
)
from torchgraft.evaluate.embeddings import Embeddings, embed
from torchgraft.evaluate.label_issues import (
    LabelIssue,
    find_label_issues,
    fold_count,
    out_of_fold_probabilities,
)
from torchgraft.evaluate.neighbours import knn_distance, nearest

logger = logging.getLogger(__name__)

# Two images are copies when their content embeddings (or one's and the other's mirrored)
# are at least this similar. Measured on mnist5k (benchmarks/label_issues.py): planted
# mirrored 85% crops reach 0.954-0.995, but different hand-written 1s, near identical once
# trimmed, reach 0.9966; at 0.99, 130 of the 5,000 digits link to another (118 of them 1s).
DUPLICATE_SIMILARITY = 0.99
_DUPLICATE_CANDIDATES = 5  # nearest neighbours examined per image for copies
# An image is an outlier when its mean cosine distance to its nearest neighbours is this many
# times the data's median one: on mnist5k the farthest of the 5,000 digits is at 3.4 times.
OUTLIER_RATIO = 4.0
OUTLIER_NEIGHBOURS = 5


@dataclass(frozen=True)
class LabelIssueFinding:
    file: str  # as the audit names it: relative to the data folder
    split: str  # where training uses it: train, val or test
    given: str  # the class it is labelled as
    suggested: str  # the class the probe is confident it shows
    confidence: float  # out-of-fold probability of the suggested class
    given_probability: float  # ... of the given class (lowest first)


@dataclass(frozen=True)
class SemanticDuplicates(CopyGroup):
    """Images that show the same picture, perhaps flipped or cropped (every pair in the
    group linked through a chain of similar pairs)."""

    similarity: float  # the weakest link's cosine similarity


@dataclass(frozen=True)
class Outlier:
    file: str
    split: str
    class_name: str
    score: float  # mean cosine distance to its nearest neighbours, / the data's median


@dataclass
class DeepReport:
    """What the embeddings showed; part of the AuditReport as `deep`."""

    model: str  # the backbone that embedded the images
    image_size: int  # ... at this input size
    images: int  # images embedded
    probe_accuracy: float  # out-of-fold accuracy of the probe against the given labels
    folds: int  # of the probe (0: no class had 2 images, no label issues looked for)
    duplicate_similarity: float  # the threshold used
    outlier_ratio: float  # the threshold used
    seconds: float  # time taken, embeddings included
    label_issues: list[LabelIssueFinding] = field(default_factory=list)
    semantic_duplicates: list[SemanticDuplicates] = field(default_factory=list)
    outliers: list[Outlier] = field(default_factory=list)

    def findings(self) -> list[Finding]:
        return [*_label_findings(self), *_duplicate_findings(self), *_outlier_findings(self)]

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["semantic_duplicates"] = copy_group_dicts(self.semantic_duplicates)
        return data


def deep_audit(
    config: RunConfig, splits: DataSplits, leave_out: set[str], quiet: bool = False
) -> DeepReport:
    """Label issues, semantic duplicates and outliers of `splits`, the data `config` trains
    on. Images named in `leave_out` (as the audit report names them: blank ones, all alike)
    are kept out of the copies and outliers.
    """
    started = time.monotonic()
    embeddings = embed(config, splits, quiet=quiet)
    places = zip(embeddings.split, embeddings.index.tolist(), strict=True)
    names = [image_name(splits, split, index) for split, index in places]
    class_names = splits.class_names
    folds = fold_count(embeddings.labels)
    issues, accuracy = [], 0.0
    if folds >= 2:
        probabilities = out_of_fold_probabilities(
            embeddings.plain, embeddings.labels, len(class_names), seed=config.train.seed
        )
        accuracy = float((probabilities.argmax(1) == embeddings.labels).mean())
        issues = _label_issues(probabilities, embeddings, names, class_names)
    else:
        logger.warning("no label issues looked for: every class has a single readable image")
    comparable = np.array([name not in leave_out for name in names])
    report = DeepReport(
        embeddings.model, embeddings.image_size, len(names), accuracy, folds,
        DUPLICATE_SIMILARITY, OUTLIER_RATIO, 0.0, issues,
        _semantic_duplicates(embeddings, names, class_names, comparable),
        _outliers(embeddings, names, class_names, comparable),
    )  # fmt: skip
    report.seconds = round(time.monotonic() - started, 1)
    logger.info(
        "deep audit of %d images: %d label issues, %d copy groups, %d outliers (%.0f s)",
        len(names), len(report.label_issues), len(report.semantic_duplicates),
        len(report.outliers), report.seconds,
    )  # fmt: skip
    return report


def _label_issues(
    probabilities: np.ndarray, embeddings: Embeddings, names: list[str], class_names: list[str]
) -> list[LabelIssueFinding]:
    issues = find_label_issues(probabilities, embeddings.labels)
    return [_label_issue(issue, embeddings, names, class_names) for issue in issues]


def _label_issue(
    issue: LabelIssue, embeddings: Embeddings, names: list[str], class_names: list[str]
) -> LabelIssueFinding:
    return LabelIssueFinding(
        names[issue.row], embeddings.split[issue.row], class_names[issue.given],
        class_names[issue.suggested], round(issue.confidence, 4),
        round(issue.given_probability, 4),
    )  # fmt: skip


def _semantic_duplicates(
    embeddings: Embeddings, names: list[str], class_names: list[str], comparable: np.ndarray
) -> list[SemanticDuplicates]:
    """Groups of images whose content, as it is or mirrored, is at least
    DUPLICATE_SIMILARITY alike, largest similarity first."""
    rows = np.flatnonzero(comparable)
    content, mirrored = embeddings.content[rows], embeddings.mirrored[rows]
    links: list[tuple[int, int, float]] = []
    for candidates in (content, mirrored):
        similarities, neighbours = nearest(
            content, candidates, _DUPLICATE_CANDIDATES, same_set=True
        )
        for a, b in (similarities >= DUPLICATE_SIMILARITY).nonzero().tolist():
            first, second = int(rows[a]), int(rows[int(neighbours[a, b])])
            links.append((first, second, 1.0 - float(similarities[a, b])))
    groups = [
        SemanticDuplicates(
            [names[i] for i in members],
            [embeddings.split[i] for i in members],
            [class_names[int(embeddings.labels[i])] for i in members],
            round(1.0 - distance, 4),
        )
        for members, distance in linked_groups(links)
    ]
    return sorted(groups, key=lambda group: (-group.similarity, group.files))


def _outliers(
    embeddings: Embeddings, names: list[str], class_names: list[str], comparable: np.ndarray
) -> list[Outlier]:
    """Images whose nearest neighbours are OUTLIER_RATIO times farther than usual, farthest
    first."""
    rows = np.flatnonzero(comparable)
    if len(rows) <= OUTLIER_NEIGHBOURS:
        return []
    plain = embeddings.plain[rows]
    distances = knn_distance(plain, plain, OUTLIER_NEIGHBOURS, same_set=True)
    scores = distances / distances.median().clamp_min(1e-6)
    far = [int(rows[i]) for i in torch.nonzero(scores >= OUTLIER_RATIO).flatten().tolist()]
    score_of = dict(zip(rows.tolist(), scores.tolist(), strict=True))
    found = [
        Outlier(
            names[row],
            embeddings.split[row],
            class_names[int(embeddings.labels[row])],
            round(score_of[row], 2),
        )
        for row in far
    ]
    return sorted(found, key=lambda outlier: -outlier.score)


_SHOWN = 6  # files named per copy group in a report line; --json lists them all


def _label_findings(report: DeepReport) -> list[Finding]:
    return [
        Finding(
            "label issues",
            f"{issue.file} ({issue.split}): labelled {issue.given}, looks like "
            f"{issue.suggested} ({issue.confidence:.0%} sure; {issue.given_probability:.0%} "
            f"for {issue.given})",
        )
        for issue in report.label_issues
    ]


def _duplicate_findings(report: DeepReport) -> list[Finding]:
    findings = []
    for group in report.semantic_duplicates:
        files = ", ".join(f"{f} ({s})" for f, s in zip(group.files, group.splits, strict=True))
        if len(group.files) > _SHOWN:
            files = ", ".join(group.files[:_SHOWN]) + f", ... ({len(group.files)} in all)"
        where = f"leaks across {'/'.join(group.spans)}" if group.leaks else "within one split"
        findings.append(
            Finding(
                "semantic duplicates",
                f"{files}: the same picture (similarity {group.similarity:.3f}), {where}",
                problem=group.leaks,
            )
        )
    return findings


def _outlier_findings(report: DeepReport) -> list[Finding]:
    return [
        Finding(
            "outliers",
            f"{outlier.file} ({outlier.split}, {outlier.class_name}): unlike every other "
            f"image ({outlier.score:.1f} times the usual distance to its neighbours)",
        )
        for outlier in report.outliers
    ]


SMALL_IMAGE_SIDE = 64  # images no larger than this are embedded at this size


def deep_audit_of(report: AuditReport, config: RunConfig) -> DeepReport:
    """The deep audit of the data `report` audited, as `config` would train on it."""
    splits = load_run_splits(config)
    if config.data.image_size is None:
        size = embedding_size(report.image_size, report.sizes)
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, image_size=size))
    blank = {image.file for image in report.blank_images}
    return deep_audit(config, splits, blank, quiet=config.train.quiet)


def embedding_size(training_size: int, sizes: dict[str, dict[str, float]]) -> int:
    """The input size to embed at: training's, except that small images (digits) are
    embedded at SMALL_IMAGE_SIDE px, as training sees the bundled digit sets: for 28 px
    digits 224 px would cost twelve times as much (over 3 minutes for mnist5k on 2 cores)."""
    if not sizes:
        return training_size
    median_side = max(sizes["width"]["median"], sizes["height"]["median"])
    if median_side <= SMALL_IMAGE_SIDE:
        return min(training_size, SMALL_IMAGE_SIDE)
    return training_size

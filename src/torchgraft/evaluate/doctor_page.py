"""The review page of `graft doctor --html`: the findings that name images, with thumbnails.

A person decides what to do about a wrong label, a copy or an outlier by looking at it; the
page puts each one beside its numbers. It is one self-contained file like report.html
(evaluate.pages): thumbnails are data URIs, so the page opens offline and can be mailed.
Sections follow the report's order of categories (audit.CATEGORIES); each lists at most a
few hundred images, and says how many more the --json report holds.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from torchgraft.artifact import atomic_write_bytes
from torchgraft.data.audit import CATEGORIES, AuditReport, CopyGroup
from torchgraft.errors import UserError
from torchgraft.evaluate.deep_audit import DeepReport
from torchgraft.evaluate.pages import document, escape, markup_table, section, table
from torchgraft.evaluate.thumbnails import THUMBNAIL_SIDE, Thumbnail, Thumbnails

logger = logging.getLogger(__name__)
T = TypeVar("T")

ROWS_SHOWN = 200  # images listed per section (label issues, outliers, ...)
GROUPS_SHOWN = 100  # copy groups listed per section
GROUP_IMAGES_SHOWN = 8  # thumbnails per copy group
_DEEP_CATEGORIES = ("label issues", "semantic duplicates", "outliers")

_STYLE = f"""
.thumb {{ width: {THUMBNAIL_SIDE}px; height: {THUMBNAIL_SIDE}px; object-fit: contain;
          display: block; background: #f6f6f6; }}
div.thumb {{ display: flex; align-items: center; justify-content: center; color: #666;
             font-size: 0.75em; text-align: center; }}
.group {{ display: flex; flex-wrap: wrap; gap: 0.6em; }}
figure {{ margin: 0; width: {THUMBNAIL_SIDE}px; }}
figcaption {{ font-size: 0.7em; line-height: 1.3; overflow-wrap: anywhere; }}
td {{ vertical-align: top; }} .file {{ overflow-wrap: anywhere; }}
.mark {{ color: #fff; background: #c62828; border-radius: 4px; padding: 0 0.4em;
         white-space: nowrap; }}
section:not(#section-summary) :is(th, td) {{ text-align: left; }}
"""

Pictures = Callable[[str], Thumbnail]  # report name -> its thumbnail


def check_page_path(path: str | Path) -> Path:
    """The page's path, refused before any audit work (minutes, with --deep) when it cannot
    be written: a folder, under a file, in a folder this user may not write to, or an
    existing file that is not an HTML page (an image or a config named by mistake is never
    replaced)."""
    page = Path(path).expanduser()
    if page.is_file() and page.suffix.lower() not in (".html", ".htm"):
        raise UserError(
            f"{page} exists and is not an HTML page: the review page (--html) would replace "
            f"it. Name a new file, e.g. {page.with_suffix('.html')}."
        )
    if page.is_dir():
        raise UserError(
            f"the review page (--html) must be a file, and {page} is a folder: name a file, "
            f"e.g. {page / 'doctor.html'}."
        )
    existing = next(parent for parent in page.absolute().parents if parent.exists())
    if not existing.is_dir():
        raise UserError(f"cannot write the review page {page}: {existing} is not a folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write the review page {page}: no permission to write {existing}.")
    return page


def write_doctor_page(report: AuditReport, path: str | Path) -> Path:
    """Write the review page of `report` to `path`, atomically (the only file written)."""
    page = check_page_path(path)
    pictures = Thumbnails(report.source, report.val_fraction, report.seed, report.channels)
    text = render_doctor_page(report, pictures)
    try:
        atomic_write_bytes(page, text.encode())
    except OSError as error:
        raise UserError(f"cannot write the review page {page}: {error.strerror or error}") from None
    logger.info("review page written to %s", page)
    return page


def render_doctor_page(report: AuditReport, pictures: Pictures) -> str:
    """The whole page as one HTML string; `pictures` makes the thumbnails."""
    deep = report.deep if isinstance(report.deep, DeepReport) else None
    findings = [
        section("Summary", _summary(report, deep)),
        section("Unreadable files", _unreadable(report)),
        section("Blank images", _blank(report, pictures)),
        section("Exact duplicates", _groups(report.exact_duplicates, pictures, "exact duplicates")),
        section(
            "Near duplicates",
            _groups(report.near_duplicates, pictures, "near duplicates", "distance"),
        ),
        *_deep_sections(deep, pictures),
        section("Tiny images", _tiny(report, pictures)),
        section("Other findings", _other_findings(report)),
    ]
    return document(f"torchgraft doctor: {report.source}", "".join(findings), _STYLE)


def _summary(report: AuditReport, deep: DeepReport | None) -> str:
    images = sum(sum(per_class.values()) for per_class in report.counts.values())
    split = "train/val to be drawn automatically" if report.automatic_split else "splits as given"
    when = datetime.now().strftime("%Y-%m-%d %H:%M")
    return (
        f'<p class="muted">{images} readable images of {escape(report.source)} ({split}); '
        f"judged for training {escape(report.model)} at {report.image_size} px, "
        f"{report.channels} channel(s); written {when}.</p>"
        + _cards(report, deep)
        + _category_table(report, deep)
        + (_deep_settings(deep) if deep is not None else "")
        + _counts_table(report)
    )


def _cards(report: AuditReport, deep: DeepReport | None) -> str:
    cards = [("problems", len(report.problems()))]
    if deep is not None:
        cards += [("label issues", len(deep.label_issues)),
                  ("semantic duplicate groups", len(deep.semantic_duplicates)),
                  ("outliers", len(deep.outliers))]  # fmt: skip
    body = "".join(f'<div class="card">{escape(n)}<b>{escape(v)}</b></div>' for n, v in cards)
    return f'<div class="cards">{body}</div>'


def _category_table(report: AuditReport, deep: DeepReport | None) -> str:
    """Findings and problems per category, as the terminal report counts them."""
    findings = report.findings()
    found = Counter(finding.category for finding in findings)
    problems = Counter(finding.category for finding in findings if finding.problem)
    rows = [
        [category, "not run (--deep)", ""]
        if deep is None and category in _DEEP_CATEGORIES
        else [category, found[category], problems[category]]
        for category in CATEGORIES
    ]
    return table(["category", "findings", "problems"], rows, "categories")


def _deep_settings(deep: DeepReport) -> str:
    rows: list[list[Any]] = [
        ["backbone", deep.model],
        ["input size", f"{deep.image_size} px"],
        ["images embedded", deep.images],
        ["probe accuracy", f"{deep.probe_accuracy:.1%} ({deep.folds}-fold, vs given labels)"],
        ["duplicate similarity", f"cosine ≥ {deep.duplicate_similarity:g}"],
        ["outlier ratio", f"≥ {deep.outlier_ratio:g} times the median neighbour distance"],
        ["time", f"{deep.seconds:g} s"],
    ]
    return table(["deep audit", "value"], rows, "deep-settings")


def _counts_table(report: AuditReport) -> str:
    splits = list(report.counts)
    rows = [[name, *(report.counts[s][name] for s in splits)] for name in report.class_names]
    return table(["class", *splits], rows, "counts")


def _capped(items: Sequence[T], limit: int, what: str) -> tuple[Sequence[T], str]:
    """The first `limit` items, and a line saying how many more the --json report has."""
    hidden = len(items) - limit
    if hidden <= 0:
        return items, ""
    note = f"… and {hidden} more {what}: the --json report lists all {len(items)}."
    return items[:limit], f'<p class="muted">{escape(note)}</p>'


def _none(what: str) -> str:
    return f'<p class="muted">No {escape(what)}.</p>'


def _thumbnail(name: str, pictures: Pictures) -> str:
    picture = pictures(name)
    if picture.uri is None:  # unreadable now, or moved: the reason on hover
        return f'<div class="thumb" title="{escape(picture.reason)}">no picture</div>'
    return f'<img class="thumb" alt="{escape(name)}" title="{escape(name)}" src="{picture.uri}">'


def _image_rows(
    headers: list[str], rows: Sequence[tuple[str, list[str]]], pictures: Pictures, what: str
) -> str:
    """A table of (file, values) rows, each led by the file's thumbnail and name."""
    if not rows:
        return _none(what)
    shown, more = _capped(rows, ROWS_SHOWN, what)
    cells = [
        [_thumbnail(file, pictures), f'<span class="file">{escape(file)}</span>']
        + [escape(value) for value in values]
        for file, values in shown
    ]
    return markup_table(["image", "file", *headers], cells, what.replace(" ", "-")) + more


def _unreadable(report: AuditReport) -> str:
    """No thumbnails: training skips these files because they cannot be decoded."""
    if not report.unreadable:
        return _none("unreadable files")
    shown, more = _capped(report.unreadable, ROWS_SHOWN, "unreadable files")
    rows = [[entry.file, entry.split, entry.class_name, entry.reason] for entry in shown]
    return table(["file", "split", "class", "reason"], rows, "unreadable-files") + more


def _blank(report: AuditReport, pictures: Pictures) -> str:
    figures = [
        (image.file, [f"{image.split}, {image.class_name}", f"spread {image.spread:.2f}"])
        for image in report.blank_images
    ]
    return _image_grid(figures, pictures, "blank images")


def _tiny(report: AuditReport, pictures: Pictures) -> str:
    figures = [(image.file, [f"{image.width}x{image.height} px"]) for image in report.tiny_images]
    return _image_grid(figures, pictures, "tiny images")


def _image_grid(figures: Sequence[tuple[str, list[str]]], pictures: Pictures, what: str) -> str:
    """Thumbnails side by side, each captioned with its file and `lines`: compact, for
    findings that are often most of the data (28 px digits are all tiny for 224 px)."""
    if not figures:
        return _none(what)
    shown, more = _capped(figures, ROWS_SHOWN, what)
    body = "".join(_figure(file, lines, pictures) for file, lines in shown)
    return f'<div class="group" id="{escape(what.replace(" ", "-"))}">{body}</div>{more}'


def _figure(file: str, lines: list[str], pictures: Pictures) -> str:
    caption = "<br>".join(escape(text) for text in [file, *lines])
    return f"<figure>{_thumbnail(file, pictures)}<figcaption>{caption}</figcaption></figure>"


def _groups(
    groups: Sequence[CopyGroup], pictures: Pictures, what: str, measure: str | None = None
) -> str:
    """One row per group of copies: its thumbnails, the splits it spans and its classes,
    how alike its copies are (`measure`: an attribute, e.g. similarity), and marks when it
    leaks across splits or its copies carry different labels."""
    if not groups:
        return _none(what)
    shown, more = _capped(groups, GROUPS_SHOWN, what)
    leaking = sum(group.leaks for group in groups)
    intro = f"<p>{_counted(len(groups), 'group')}, {leaking} of them across splits.</p>"
    headers = ["images", "splits", "classes", *([measure] if measure else []), ""]
    rows = [
        [_group_pictures(group, pictures), escape(" / ".join(group.spans)),
         escape(", ".join(sorted(set(group.classes)))),
         *([escape(f"{getattr(group, measure):g}")] if measure else []), _marks(group)]
        for group in shown
    ]  # fmt: skip
    return intro + markup_table(headers, rows, what.replace(" ", "-")) + more


def _counted(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _marks(group: CopyGroup) -> str:
    marks = ["leaks"] * group.leaks + ["labels differ"] * group.conflicting_labels
    return " ".join(f'<span class="mark">{mark}</span>' for mark in marks)


def _group_pictures(group: CopyGroup, pictures: Pictures) -> str:
    members = list(zip(group.files, group.splits, group.classes, strict=True))
    figures = "".join(
        _figure(file, [f"{split}, {class_name}"], pictures)
        for file, split, class_name in members[:GROUP_IMAGES_SHOWN]
    )
    hidden = len(members) - GROUP_IMAGES_SHOWN
    more = f'<p class="muted">+{hidden} more</p>' if hidden > 0 else ""
    return f'<div class="group">{figures}{more}</div>'


def _deep_sections(deep: DeepReport | None, pictures: Pictures) -> list[str]:
    if deep is None:
        return [
            section(
                "Deep audit",
                "<p>Not run: <code>graft doctor DATA --deep --html PAGE</code> embeds every "
                "image with the model's pretrained backbone and adds wrong labels, copies "
                "(flipped or cropped too) and outliers to this page.</p>",
            )
        ]
    label_rows = [
        (issue.file, [issue.split, f"{issue.given} → {issue.suggested}",
                      f"{issue.confidence:.0%}", f"{issue.given_probability:.0%}"])
        for issue in deep.label_issues
    ]  # fmt: skip
    outlier_rows = [
        (outlier.file, [outlier.split, outlier.class_name, f"{outlier.score:.1f}"])
        for outlier in deep.outliers
    ]
    label_headers = ["split", "given → suggested", "confidence", "given label's probability"]
    return [
        section("Label issues", _image_rows(label_headers, label_rows, pictures, "label issues")),
        section(
            "Semantic duplicates",
            _groups(deep.semantic_duplicates, pictures, "semantic duplicates", "similarity"),
        ),
        section(
            "Outliers", _image_rows(["split", "class", "score"], outlier_rows, pictures, "outliers")
        ),
    ]


def _other_findings(report: AuditReport) -> str:
    """The findings that name no image (imbalance, missing classes, modes and sizes)."""
    named = {"unreadable", "blank images", "exact duplicates", "near duplicates", "leakage",
             "tiny images", *_DEEP_CATEGORIES}  # fmt: skip
    lines = [finding for finding in report.findings() if finding.category not in named]
    if not lines:
        return _none("other findings")
    items = "".join(
        f"<li>{escape(finding.line)}{'' if finding.problem else ' (note)'}</li>"
        for finding in lines
    )
    return f"<ul>{items}</ul>"

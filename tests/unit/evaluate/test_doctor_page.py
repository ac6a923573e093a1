"""The review page of `graft doctor --html`, from reports built directly (no backbone run)."""

from __future__ import annotations

import base64
import io
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from torchgraft.data.audit import AuditReport, audit
from torchgraft.data.sources import load_data
from torchgraft.errors import UserError
from torchgraft.evaluate.deep_audit import (
    DeepReport,
    LabelIssueFinding,
    Outlier,
    SemanticDuplicates,
)
from torchgraft.evaluate.doctor_page import check_page_path, render_doctor_page, write_doctor_page
from torchgraft.evaluate.thumbnails import THUMBNAIL_SIDE, Thumbnails, thumbnail_uri
from torchgraft.testing import make_image_folder


class _Images(HTMLParser):
    """The <img> tags of a page, as attribute dicts."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append(dict(attrs))


def images_of(page: str) -> list[dict[str, str | None]]:
    parser = _Images()
    parser.feed(page)
    return parser.images


def picture(uri: str) -> Image.Image:
    mime, payload = uri.split(";base64,")
    assert mime in ("data:image/png", "data:image/jpeg")
    return Image.open(io.BytesIO(base64.b64decode(payload)))


@pytest.fixture
def report(tmp_path: Path) -> AuditReport:
    """A small folder's audit with an odd file name (an exact copy), an unreadable file, and
    deep findings written by hand, one naming a file that is gone."""
    root = make_image_folder(tmp_path / "data", per_class=4, size=32)
    shutil.copy(root / "circle/circle_000.png", root / "circle/<b>&.png")
    (root / "square/broken.png").write_bytes(b"not a picture")
    found = audit(str(root), workers=0, quiet=True)
    found.deep = DeepReport(
        model="efficientnet_lite0", image_size=64, images=12, probe_accuracy=0.875, folds=5,
        duplicate_similarity=0.99, outlier_ratio=4.0, seconds=1.5,
        label_issues=[
            LabelIssueFinding("circle/<b>&.png", "train", "circle", "square", 0.93, 0.02)
        ],
        semantic_duplicates=[SemanticDuplicates(
            ["circle/circle_001.png", "square/square_001.png"], ["train", "val"],
            ["circle", "square"], 0.9951,
        )],
        outliers=[Outlier("triangle/triangle_002.png", "val", "triangle", 5.2),
                  Outlier("triangle/gone.png", "train", "triangle", 4.4)],
    )  # fmt: skip
    return found


def test_the_page_shows_every_finding_with_its_thumbnail_and_escapes_file_names(
    report: AuditReport, tmp_path: Path
) -> None:
    page = write_doctor_page(report, tmp_path / "review.html").read_text()
    assert "circle/&lt;b&gt;&amp;.png" in page and "<b>&.png" not in page
    for shown in ("circle → square", "93%", "0.9951", "5.2", "87.5%", "cosine ≥ 0.99",
                  "≥ 4 times", "efficientnet_lite0", "64 px", "square/broken.png",
                  "not an image (unrecognised format)"):  # fmt: skip
        assert shown in page, shown
    assert page.count('<span class="mark">leaks</span>') == 1  # the semantic pair
    assert '<span class="mark">labels differ</span>' in page  # the exact copy
    images = images_of(page)
    named = [image["alt"] for image in images]
    # the exact pair, the label issue, the semantic pair, one outlier, every tiny image
    for file in ("circle/<b>&.png", "circle/circle_001.png", "triangle/triangle_002.png"):
        assert file in named
    assert "square/broken.png" not in named and "triangle/gone.png" not in named
    assert page.count('title="not in the data any more">no picture</div>') == 1
    for image in images:
        thumbnail = picture(str(image["src"]))
        assert max(thumbnail.size) == THUMBNAIL_SIDE  # 32 px enlarged to the thumbnail side


def test_without_deep_the_page_says_how_to_get_the_deep_findings(
    report: AuditReport, tmp_path: Path
) -> None:
    report.deep = None
    page = render_doctor_page(report, Thumbnails(report.source, 0.2, 0, 3))
    assert "Not run:" in page and "--deep" in page and 'id="label-issues"' not in page
    assert 'id="exact-duplicates"' in page and images_of(page)


def test_long_sections_are_capped_and_say_how_many_more_the_json_has(
    report: AuditReport, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torchgraft.evaluate import doctor_page

    monkeypatch.setattr(doctor_page, "ROWS_SHOWN", 2)
    page = render_doctor_page(report, Thumbnails(report.source, 0.2, 0, 3))
    hidden = len(report.tiny_images) - 2
    assert f"… and {hidden} more tiny images: the --json report lists all" in page


def test_images_of_a_bundled_array_set_are_found_by_their_report_names() -> None:
    digits = load_data("digits")
    pictures = Thumbnails("digits", 0.2, 0, channels=1)
    for split, index in (("train", 3), ("val", 0)):
        thumbnail = picture(str(pictures(f"digits {split} #{index}").uri))
        array = getattr(digits, split).images[index]  # 8x8, enlarged 10 times as blocks
        assert thumbnail.format == "PNG"  # flat blocks: PNG is smaller than JPEG, and exact
        assert np.array_equal(np.asarray(thumbnail)[::10, ::10], array)
    assert pictures("digits train #999999").reason == "not in the data any more"


def test_a_thumbnail_keeps_the_aspect_ratio_and_shrinks_photos() -> None:
    wide = torch.randint(0, 256, (3, 150, 300), dtype=torch.uint8)
    assert picture(thumbnail_uri(wide)).size == (THUMBNAIL_SIDE, THUMBNAIL_SIDE // 2)


def test_a_file_that_broke_since_the_audit_shows_a_placeholder(
    report: AuditReport, tmp_path: Path
) -> None:
    (Path(report.source) / "circle/circle_001.png").write_bytes(b"gone bad")
    page = render_doctor_page(report, Thumbnails(report.source, 0.2, 0, 3))
    assert 'title="not an image (unrecognised format)">no picture</div>' in page
    assert "circle/circle_001.png" not in [image["alt"] for image in images_of(page)]


def test_the_page_path_is_refused_when_it_cannot_be_a_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is a folder"):
        check_page_path(tmp_path)
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="is not a folder"):
        check_page_path(tmp_path / "file" / "page.html")
    assert check_page_path(tmp_path / "new" / "page.html") == tmp_path / "new" / "page.html"


def test_an_existing_file_that_is_not_a_page_is_never_replaced(tmp_path: Path) -> None:
    photo = tmp_path / "cat.jpg"
    photo.write_bytes(b"a user's photo")
    with pytest.raises(UserError, match="is not an HTML page"):
        check_page_path(photo)
    assert photo.read_bytes() == b"a user's photo"


def test_writing_replaces_only_the_named_file(report: AuditReport, tmp_path: Path) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "review.html").write_text("old")
    (folder / "other.html").write_text("kept")
    write_doctor_page(report, folder / "review.html")
    assert sorted(path.name for path in folder.iterdir()) == ["other.html", "review.html"]
    assert (folder / "review.html").read_text().startswith("<!DOCTYPE html>")
    assert (folder / "other.html").read_text() == "kept"


def test_a_source_gone_since_the_audit_leaves_placeholders(tmp_path: Path) -> None:
    pictures = Thumbnails(str(tmp_path / "moved"), 0.2, 0, channels=3)
    assert pictures("a/1.png").uri is None
    assert pictures("a/1.png").reason == "not in the data any more"

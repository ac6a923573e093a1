"""`graft doctor --html`: the review page, written by the real command (with --deep: the
backbone embeds a few dozen 32 px images in seconds) and opened in headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.runner import graft
from torchgraft.testing import make_image_folder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """36 generated images with mistakes planted: a circle filed as a square, a square
    copied, a file that is not an image."""
    root = make_image_folder(tmp_path_factory.mktemp("planted") / "data", per_class=12)
    shutil.move(root / "circle/circle_005.png", root / "square/filed_wrong.png")
    shutil.copy(root / "square/square_003.png", root / "square/again.png")
    (root / "triangle/broken.jpg").write_bytes(b"not a picture")
    return root


@pytest.fixture(scope="module")
def deep_page(
    planted: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    review = tmp_path_factory.mktemp("page") / "review.html"
    result = graft("doctor", str(planted), "--deep", "--html", str(review), "-q", "--workers", "0")
    return review, result


def test_deep_html_writes_one_page_with_the_planted_mistakes(
    deep_page: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    review, result = deep_page
    assert result.returncode == 1, result.stdout + result.stderr  # problems found
    assert f"review page: {review}" in result.stdout
    assert [path.name for path in review.parent.iterdir()] == ["review.html"]  # no leftovers
    text = review.read_text()
    label_issues = text.split('<table id="label-issues">')[1].split("</table>")[0]
    assert "square/filed_wrong.png" in label_issues and "square → circle" in label_issues
    copies = text.split('<table id="exact-duplicates">')[1].split("</table>")[0]
    assert 'alt="square/again.png"' in copies and 'alt="square/square_003.png"' in copies
    unreadable = text.split('<table id="unreadable-files">')[1].split("</table>")[0]
    assert "triangle/broken.jpg" in unreadable and "<img" not in unreadable
    assert "cosine ≥ 0.99" in text and "efficientnet_lite0" in text


@pytest.mark.browser
def test_the_page_opens_offline_without_errors_and_shows_the_thumbnails(
    deep_page: tuple[Path, subprocess.CompletedProcess[str]],
    page,  # type: ignore[no-untyped-def]
) -> None:
    review, _ = deep_page
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(review.as_uri())
    page.wait_for_load_state("load")
    assert page.errors == []
    assert all(url.startswith(("file:", "data:")) for url in requests), requests
    thumbnails = page.locator("img.thumb")
    assert thumbnails.count() > 10
    widths = thumbnails.evaluate_all("images => images.map(i => i.complete && i.naturalWidth)")
    assert all(width and width > 0 for width in widths), widths
    assert page.locator("#label-issues img.thumb").first.is_visible()
    assert page.locator("#section-summary #deep-settings").is_visible()


def test_html_without_deep_writes_the_pixel_findings_beside_the_json(
    planted: Path, tmp_path: Path
) -> None:
    review = tmp_path / "pixels.html"
    review.write_text("an older page")  # named by the user: replaced
    result = graft("doctor", str(planted), "--json", "--html", str(review), "--workers", "0")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)  # the page does not change what stdout holds
    assert report["deep"] is None and report["unreadable"]
    text = review.read_text()
    assert "Not run:" in text and 'alt="square/again.png"' in text


def test_a_folder_as_the_page_is_refused_before_the_audit(planted: Path, tmp_path: Path) -> None:
    result = graft("doctor", str(planted), "--deep", "--html", str(tmp_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "must be a file" in result.stderr and "auditing" not in result.stderr

"""The page at GET /, in headless Chromium: pick an image, see the predicted class."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest
from PIL import Image

from torchgraft.testing import class_image

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def test_the_page_shows_the_predicted_class_of_an_uploaded_image(
    server: str,
    page,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    from playwright.sync_api import expect

    image = tmp_path / "shape.png"
    Image.fromarray(class_image(2, 32, seed=7)).save(image)
    page.goto(server)
    expect(page.locator("#model")).to_contain_text("cnn")
    page.set_input_files("#file", str(image))
    expect(page.locator("#prediction")).to_contain_text("triangle")
    expect(page.locator("#bars li")).to_have_count(3)
    expect(page.locator("#source")).to_have_text("shape.png")
    expect(page.locator("#explanation")).to_be_visible()  # the Grad-CAM overlay arrived
    expect(page.locator("#overlay")).to_have_js_property("naturalWidth", 224)
    expect(page.locator("#unfamiliar")).to_be_hidden()  # a shape like the training ones
    assert page.errors == []

    from skimage.data import chelsea

    cat = tmp_path / "cat.png"
    Image.fromarray(chelsea()).save(cat)
    page.set_input_files("#file", str(cat))
    expect(page.locator("#source")).to_have_text("cat.png")
    expect(page.locator("#unfamiliar")).to_be_visible()
    expect(page.locator("#unfamiliar")).to_contain_text("Unfamiliar input")

    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    page.set_input_files("#file", str(notes))
    expect(page.locator("#error")).to_contain_text("not an image")


def test_only_the_latest_upload_is_drawn_when_answers_come_out_of_order(
    server: str,
    page,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """The first upload's answer is held back until the second one is drawn, as when a big
    photo is followed by a small one: the late answer must not replace the second's result."""
    from playwright.sync_api import Error, expect

    first, second = tmp_path / "first.png", tmp_path / "second.png"
    Image.fromarray(class_image(2, 32, seed=7)).save(first)  # a triangle
    Image.fromarray(class_image(0, 32, seed=7)).save(second)  # a circle
    held: list = []  # type: ignore[type-arg]
    page.route("**/predict", lambda route: route.continue_() if held else held.append(route))
    page.goto(server)
    expect(page.locator("#model")).to_contain_text("cnn")
    page.set_input_files("#file", str(first))
    deadline = time.monotonic() + 30
    while not held:
        assert time.monotonic() < deadline, "the first upload never reached /predict"
        page.wait_for_timeout(20)
    page.set_input_files("#file", str(second))
    expect(page.locator("#prediction")).to_contain_text("circle")
    expect(page.locator("#explanation")).to_be_visible()
    with contextlib.suppress(Error):  # the page may have aborted it already
        held[0].continue_()
    page.wait_for_timeout(500)  # time for a stale answer to arrive and (wrongly) be drawn
    expect(page.locator("#source")).to_have_text("second.png")
    expect(page.locator("#prediction")).to_contain_text("circle")
    expect(page.locator("#error")).to_be_hidden()

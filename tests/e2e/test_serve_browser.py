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


# Counts the /predict requests that have settled. It wraps fetch before the page's script
# runs, so its callbacks are registered before the page's own `await`s on the same promises;
# the count goes up in a task queued after them, i.e. after the page has drawn (or declined
# to draw) that answer.
COUNT_SETTLED_PREDICTIONS = """
window.settledPredictions = 0;
const settled = () => setTimeout(() => { window.settledPredictions += 1; }, 0);
const realFetch = window.fetch;
window.fetch = function (url, options) {
  const answer = realFetch.call(this, url, options);
  if (!String(url).endsWith("/predict")) return answer;
  answer.then((response) => {
    const realJson = response.json.bind(response);
    response.json = () => {
      const body = realJson();
      body.then(settled, settled);
      return body;
    };
  }, settled);
  return answer;
};
"""


def test_only_the_latest_upload_is_drawn_when_answers_come_out_of_order(
    server: str,
    page,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """The first upload's answer is held back until the second one is drawn, as when a big
    photo is followed by a small one: the late answer must not replace the second's result.

    No fixed wait: the page counts each /predict that has settled (its body read, or the
    request aborted) one task after the page's own handler ran, so once both have settled
    whatever the stale answer was going to draw is drawn."""
    from playwright.sync_api import Error, expect

    first, second = tmp_path / "first.png", tmp_path / "second.png"
    Image.fromarray(class_image(2, 32, seed=7)).save(first)  # a triangle
    Image.fromarray(class_image(0, 32, seed=7)).save(second)  # a circle
    held: list = []  # type: ignore[type-arg]
    page.route("**/predict", lambda route: route.continue_() if held else held.append(route))
    page.add_init_script(COUNT_SETTLED_PREDICTIONS)
    page.goto(server)
    expect(page.locator("#model")).to_contain_text("cnn")
    page.set_input_files("#file", str(first))
    deadline = time.monotonic() + 30
    while not held:
        assert time.monotonic() < deadline, "the first upload never reached /predict"
        page.wait_for_timeout(20)  # sleep-ok: paces a poll with a deadline
    page.set_input_files("#file", str(second))
    expect(page.locator("#prediction")).to_contain_text("circle")
    expect(page.locator("#explanation")).to_be_visible()
    with contextlib.suppress(Error):  # the page may have aborted it already
        held[0].continue_()
    page.wait_for_function("window.settledPredictions === 2", timeout=30_000)
    expect(page.locator("#source")).to_have_text("second.png")
    expect(page.locator("#prediction")).to_contain_text("circle")
    expect(page.locator("#error")).to_be_hidden()

"""The page at GET /, in headless Chromium, beyond the file picker: an image dropped on the
drop zone is classified, and refused uploads, a failing server and an unreachable one are
each said in words, after which the next good image is classified as usual."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image

from torchgraft.testing import class_image

pytestmark = [pytest.mark.slow, pytest.mark.browser]

# Drop a PNG on the drop zone as a person's drag from the file manager does: a File inside
# a DataTransfer, carried by dragenter, dragover and drop events. It answers whether the page
# took the dragover (without which a browser refuses the drop) and the drop (without which
# the browser opens the file itself, leaving the page).
DROP = """async ([png, name]) => {
  const bytes = Uint8Array.from(atob(png), (c) => c.charCodeAt(0));
  const data = new DataTransfer();
  data.items.add(new File([bytes], name, { type: "image/png" }));
  const zone = document.getElementById("drop");
  const fire = (type) => {
    const event = new DragEvent(type, { bubbles: true, cancelable: true, dataTransfer: data });
    zone.dispatchEvent(event);
    return event.defaultPrevented;
  };
  fire("dragenter");
  return { over: fire("dragover"), drop: fire("drop") };
}"""


def png_base64(label: int) -> str:
    buffer = io.BytesIO()
    Image.fromarray(class_image(label, 32, seed=7)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_an_image_dropped_on_the_drop_zone_is_classified(server: str, page) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    page.goto(server)
    expect(page.locator("#model")).to_contain_text("cnn")
    taken = page.evaluate(DROP, [png_base64(2), "dropped.png"])  # a triangle
    assert taken == {"over": True, "drop": True}
    expect(page.locator("#source")).to_have_text("dropped.png")
    expect(page.locator("#prediction")).to_contain_text("triangle")
    expect(page.locator("#bars li")).to_have_count(3)
    expect(page.locator("#explanation")).to_be_visible()
    expect(page.locator("#drop")).not_to_have_class("over")
    expect(page.locator("#error")).to_be_hidden()
    assert page.errors == []


def test_failures_are_said_in_words_and_the_page_recovers(
    server: str,
    page,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    from playwright.sync_api import expect

    triangle, circle = tmp_path / "triangle.png", tmp_path / "circle.png"
    notes = tmp_path / "notes.txt"
    Image.fromarray(class_image(2, 32, seed=7)).save(triangle)
    Image.fromarray(class_image(0, 32, seed=7)).save(circle)
    notes.write_text("not an image")
    error, result = page.locator("#error"), page.locator("#result")
    page.goto(server)
    expect(page.locator("#model")).to_contain_text("cnn")

    # Refused by the server (415): its status and its reason, and no prediction drawn.
    page.set_input_files("#file", str(notes))
    expect(error).to_contain_text("Could not classify notes.txt")
    expect(error).to_contain_text("415")
    expect(error).to_contain_text("'text/plain', which is not an image")
    expect(result).to_be_hidden()

    page.set_input_files("#file", str(triangle))
    expect(page.locator("#prediction")).to_contain_text("triangle")
    expect(error).to_be_hidden()

    # The server fails (500, a traceback as plain text): the status in words, not the
    # traceback, and the earlier prediction is not left beside it as if it were this one's.
    page.route("**/predict", lambda route: route.fulfill(
        status=500, content_type="text/plain",
        body='Traceback (most recent call last):\n  File "app.py", line 1\nRuntimeError: boom',
    ))  # fmt: skip
    page.set_input_files("#file", str(circle))
    expect(error).to_contain_text("Could not classify circle.png")
    expect(error).to_contain_text("500")
    expect(error).to_contain_text("the server failed")
    expect(error).not_to_contain_text("Traceback")
    expect(result).to_be_hidden()

    # The server is gone (connection refused): said so, not "TypeError: Failed to fetch".
    page.unroute("**/predict")
    page.route("**/predict", lambda route: route.abort("connectionrefused"))
    page.set_input_files("#file", str(triangle))
    expect(error).to_contain_text("Could not classify triangle.png")
    expect(error).to_contain_text("the server did not answer")
    expect(error).not_to_contain_text("TypeError")

    # Back up: the next good image is classified as if nothing had happened.
    page.unroute("**/predict")
    page.set_input_files("#file", str(circle))
    expect(page.locator("#prediction")).to_contain_text("circle")
    expect(page.locator("#source")).to_have_text("circle.png")
    expect(page.locator("#explanation")).to_be_visible()
    expect(error).to_be_hidden()
    # Chromium logs each refused request as a console error; nothing else may be logged.
    assert [e for e in page.errors if "Failed to load resource" not in e] == []

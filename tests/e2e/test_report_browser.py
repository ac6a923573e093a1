"""report.html opened as a user would: from disk, offline, in headless Chromium."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def test_report_opens_offline_with_the_confusion_matrix_and_per_class_table(
    tiny_run: Path,
    page,  # type: ignore[no-untyped-def]
) -> None:
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto((tiny_run / "report.html").as_uri())
    page.wait_for_load_state("load")
    assert page.errors == []
    assert all(url.startswith(("file:", "data:")) for url in requests), requests

    matrix = page.locator("#confusion-matrix")
    assert matrix.is_visible()
    assert matrix.evaluate("image => image.complete && image.naturalWidth > 0")
    names = json.loads((tiny_run / "graft.json").read_text())["display_names"]
    rows = page.locator("#per-class tbody tr").all_inner_texts()
    assert [row.split("\t")[0] for row in rows[: len(names)]] == names
    assert any(row.startswith("macro average") for row in rows)
    assert page.locator("#reliability-diagram").is_visible()

"""Fixtures shared by the browser tests of the served page."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serving import serving


@pytest.fixture
def server(tiny_run: Path) -> Iterator[str]:
    """A real uvicorn server for the run, as `graft serve` configures it, in a thread."""
    with serving(tiny_run) as url:
        yield url

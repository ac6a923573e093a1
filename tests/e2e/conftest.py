"""Fixtures shared by the browser tests of the served page."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def server(tiny_run: Path) -> Iterator[str]:
    """A real uvicorn server for the run, on a free loopback port, in a thread."""
    import uvicorn

    from torchgraft.serve.app import create_app

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))  # the OS picks a free port; uvicorn serves on this socket
    port = listener.getsockname()[1]
    config = uvicorn.Config(create_app(tiny_run), log_level="warning")
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not running.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)  # sleep-ok: paces a poll with a deadline
    yield f"http://127.0.0.1:{port}"
    running.should_exit = True
    thread.join(timeout=10)
    listener.close()

"""A real uvicorn server in a thread, on a free loopback port, for the tests that need the
whole HTTP stack (the server's limits, the page in a browser)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from torchgraft.artifact import Run
from torchgraft.serve.app import create_app
from torchgraft.serve.predictor import Predictor
from torchgraft.serve.server import ServerSettings, server_config


@contextlib.contextmanager
def serving(run: Run | Path | Predictor, **settings: float) -> Iterator[str]:
    """The app served by uvicorn in a thread, as `graft serve` configures it; yields its URL."""
    chosen = ServerSettings(**settings)  # type: ignore[arg-type]
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    config = server_config(create_app(run, settings=chosen), "127.0.0.1", port, chosen)
    config.log_level = "warning"
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)  # sleep-ok: paces a poll with a deadline
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        listener.close()

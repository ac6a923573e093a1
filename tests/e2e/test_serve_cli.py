"""`graft serve` as a user runs it: answers on its port, stops cleanly on Ctrl-C."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.runner import GRAFT
from torchgraft.serve.bad_uploads import encoded

pytestmark = pytest.mark.slow


def test_graft_serve_answers_and_stops_on_ctrl_c(tiny_run: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [*GRAFT, "serve", "--run", str(tiny_run), "--port", str(port), "--top-k", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.communicate()[0]
            assert time.monotonic() < deadline, "graft serve did not start"
            try:
                health = httpx.get(f"{url}/health", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert health.json()["status"] == "ok"
        answer = httpx.post(
            f"{url}/predict", files={"file": ("x.png", encoded("PNG"), "image/png")}
        )
        assert answer.status_code == 200 and len(answer.json()["top_k"]) == 2
    finally:
        server.send_signal(signal.SIGINT)
        output, _ = server.communicate(timeout=30)
    assert server.returncode == 0, output
    assert "Traceback" not in output and "interrupted" not in output

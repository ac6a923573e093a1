"""`graft serve` as a user runs it: answers on its port, stops cleanly on Ctrl-C."""

from __future__ import annotations

import io
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.e2e.runner import GRAFT
from torchgraft.testing import encoded_image

pytestmark = pytest.mark.slow


def test_graft_serve_answers_and_stops_on_ctrl_c(tiny_run: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [*GRAFT, "serve", "--run", str(tiny_run), "--port", str(port), "--top-k", "2",
         "--max-megapixels", "0.5", "--idle-timeout", "2", "--body-timeout", "5",
         "--max-pending", "8"],
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
                time.sleep(0.2)  # sleep-ok: paces retries until the server answers, with a deadline
        assert health.json()["status"] == "ok" and health.json()["max_pixels"] == 500_000
        answer = httpx.post(
            f"{url}/predict", files={"file": ("x.png", encoded_image("PNG"), "image/png")}
        )
        assert answer.status_code == 200 and len(answer.json()["top_k"]) == 2
        big = io.BytesIO()
        Image.new("L", (1000, 1000), 128).save(big, format="PNG")  # 1 megapixel, 1 KB
        refused = httpx.post(f"{url}/predict", content=big.getvalue())
        assert refused.status_code == 413 and "0.5 megapixels" in refused.json()["detail"]
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200
        assert httpx.get(f"{url}/docs", timeout=5).status_code == 404  # Swagger needs a CDN
    finally:
        server.send_signal(signal.SIGINT)
        output, _ = server.communicate(timeout=30)
    assert server.returncode == 0, output
    assert "Traceback" not in output and "interrupted" not in output

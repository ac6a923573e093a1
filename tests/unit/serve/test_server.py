"""The app under a real uvicorn, on a free port: idle sockets, slow bodies and overload never
starve it, and bad uploads still get a 4xx through the real HTTP stack."""

from __future__ import annotations

import inspect
import io
import select
import socket
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.serving import serving
from torchgraft.serve.predictor import Predictor
from torchgraft.testing import bad_uploads, class_image


def png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(class_image(0, 32)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def predictor(tiny_run: Path) -> Predictor:
    return Predictor.from_run(tiny_run, "cpu")


def open_sockets(url: str, count: int) -> list[socket.socket]:
    port = int(url.rsplit(":", 1)[1])
    return [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]


def closed_by_server(connection: socket.socket, within: float) -> bool:
    """Whether the server closes `connection` (or answers and closes) within `within` s."""
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([connection], [], [], left)
        if readable and not connection.recv(65536):
            return True
    return False


def read_until_closed(connection: socket.socket, within: float) -> bytes:
    """What the server still sends on `connection` before it closes it (fails if it does not
    close it within `within` s)."""
    received, deadline = b"", time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([connection], [], [], left)
        if readable:
            chunk = connection.recv(65536)
            if not chunk:
                return received
            received += chunk
    raise AssertionError(f"the connection stayed open; received {received!r}")


def test_health_answers_within_a_second_with_64_idle_sockets_open(predictor: Predictor) -> None:
    """uvicorn's limit_concurrency=64, as before, made this 503: it counts idle sockets."""
    with serving(predictor) as url:
        idle = open_sockets(url, 64)
        try:
            health = httpx.get(f"{url}/health", timeout=1.0)  # httpx raises after 1 s
            assert health.status_code == 200 and health.json()["status"] == "ok"
            answer = httpx.post(
                f"{url}/predict", content=png(), headers={"content-type": "image/png"}
            )
            assert answer.status_code == 200 and answer.json()["top_k"]
        finally:
            for connection in idle:
                connection.close()


def trickled_until_closed(connection: socket.socket, within: float) -> bool:
    """Send a request head a byte every 0.1 s, never finishing it; whether the server
    closes the connection within `within` s."""
    head = b"GET /health HTTP/1.1\r\nX-Slow: " + b"a" * 1000
    deadline = time.monotonic() + within
    for byte in head:
        if time.monotonic() > deadline:
            return False
        try:
            connection.sendall(bytes([byte]))
        except OSError:  # broken pipe or reset: closed
            return True
        readable, _, _ = select.select([connection], [], [], 0.1)
        if readable and not connection.recv(65536):
            return True
    return False


def test_sockets_that_send_no_whole_request_are_closed_after_the_idle_timeout(
    predictor: Predictor,
) -> None:
    with serving(predictor, idle_timeout=0.5) as url:
        silent, trickling, answered = open_sockets(url, 3)
        with silent, trickling, answered:
            answered.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
            assert answered.recv(65536).startswith(b"HTTP/1.1 200")  # then kept alive, idle
            assert trickled_until_closed(trickling, within=3.0)
            assert closed_by_server(silent, within=3.0)
            assert closed_by_server(answered, within=3.0)
        assert httpx.get(f"{url}/health", timeout=1.0).status_code == 200


def test_a_body_sent_at_one_byte_a_second_is_cut_after_the_body_timeout(
    predictor: Predictor,
) -> None:
    with serving(predictor, body_timeout=2.0, min_body_rate=100) as url:
        (slow,) = open_sockets(url, 1)
        with slow:
            slow.sendall(
                b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: image/png\r\n"
                b"Content-Length: 1000\r\n\r\n"
            )
            started, answer = time.monotonic(), b""
            while not answer and time.monotonic() - started < 10:
                slow.sendall(b"\x89")
                readable, _, _ = select.select([slow], [], [], 1.0)  # one byte a second
                if readable:
                    answer = slow.recv(65536)
            answer += read_until_closed(slow, within=2.0)  # the body may come separately
            assert answer.startswith(b"HTTP/1.1 408"), answer
            assert b"after the first 2 s it must average at least" in answer
        assert httpx.get(f"{url}/health", timeout=1.0).status_code == 200


def test_uploads_beyond_max_pending_get_503_with_retry_after_and_health_still_answers(
    predictor: Predictor,
) -> None:
    with serving(predictor, max_pending=2) as url:
        stalled = open_sockets(url, 2)
        for connection in stalled:  # two uploads in progress whose bodies never come
            connection.sendall(
                b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Length: 1000\r\n\r\n"
            )
        deadline = time.monotonic() + 10
        while httpx.get(f"{url}/health", timeout=1.0).json()["uploads_in_progress"] < 2:
            assert time.monotonic() < deadline, "the server never started reading them"
            time.sleep(0.05)  # sleep-ok: paces a poll with a deadline
        refused = httpx.post(f"{url}/predict", content=png(), timeout=5)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert "2 uploads already in progress" in refused.json()["detail"]
        assert httpx.get(f"{url}/health", timeout=1.0).status_code == 200
        for connection in stalled:
            connection.close()
        deadline, status = time.monotonic() + 10, 503
        while status == 503 and time.monotonic() < deadline:  # their slots come back
            time.sleep(0.1)  # sleep-ok: paces a poll with a deadline
            status = httpx.post(f"{url}/predict", content=png(), timeout=5).status_code
        assert status == 200


def test_the_twenty_bad_uploads_get_a_4xx_through_uvicorn(predictor: Predictor) -> None:
    with serving(predictor) as url, httpx.Client(base_url=url, timeout=30) as client:
        for bad in bad_uploads():
            answer = client.post("/predict", **bad.request)
            assert answer.status_code in bad.statuses, (bad.name, answer.text)
            assert answer.json()["detail"], bad.name
        assert client.get("/health").status_code == 200


def test_the_uvicorn_internals_the_idle_timeout_relies_on_are_still_there() -> None:
    """IdleTimeoutH11Protocol overrides uvicorn's h11 protocol using private names; if an
    uvicorn upgrade renames them, the idle timeout silently stops working: fail here."""
    from uvicorn.protocols.http.h11_impl import H11Protocol, RequestResponseCycle

    assert callable(H11Protocol.timeout_keep_alive_handler)
    for method in ("connection_made", "data_received"):
        assert callable(getattr(H11Protocol, method))
    protocol_source = inspect.getsource(H11Protocol)
    assert "self.timeout_keep_alive_task" in protocol_source
    assert "self.cycle" in protocol_source
    assert "self.response_complete" in inspect.getsource(RequestResponseCycle)

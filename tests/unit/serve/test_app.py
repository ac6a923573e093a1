"""The HTTP app through FastAPI's TestClient: answers, refusals, limits, concurrent requests."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient
from PIL import Image

from torchgraft import api
from torchgraft.artifact import Run
from torchgraft.data.decode import decode_bytes
from torchgraft.errors import UserError
from torchgraft.serve.app import create_app
from torchgraft.serve.limits import BodyDeadline, Workers
from torchgraft.serve.predictor import Predictor
from torchgraft.serve.server import ServerSettings
from torchgraft.testing import DEFAULT_CLASSES, bad_uploads, class_image, encoded_image


def png(label: int, seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(class_image(label, 32, seed=seed)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def client(tiny_run: Path) -> Iterator[TestClient]:
    with TestClient(create_app(tiny_run, top_k=2)) as test_client:
        yield test_client


def test_health_names_the_model_and_its_classes(client: TestClient, tiny_run: Path) -> None:
    health = client.get("/health")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok" and body["model"] == "cnn"
    assert body["classes"] == list(DEFAULT_CLASSES) and body["top_k"] == 2
    assert body["engine"] == "eager"
    assert body["unfamiliar_threshold"] == Run.load(tiny_run).info.metrics["unfamiliar_threshold"]


def test_multipart_and_raw_uploads_get_the_same_top_k(client: TestClient, tiny_run: Path) -> None:
    image = png(2, seed=11)
    form = client.post("/predict", files={"file": ("shape.png", image, "image/png")})
    raw = client.post("/predict", content=image, headers={"content-type": "image/png"})
    assert form.status_code == raw.status_code == 200
    assert form.json()["source"] == "shape.png" and raw.json()["source"] == "upload"
    assert form.json()["top_k"] == raw.json()["top_k"]
    (expected,) = api.predict(tiny_run, Image.open(io.BytesIO(image)), top_k=2)
    assert form.json()["class_name"] == expected.class_name == "triangle"
    assert form.json()["unfamiliar"] == pytest.approx(expected.unfamiliar, abs=1e-6)
    assert form.json()["is_unfamiliar"] is expected.is_unfamiliar is False
    assert form.json()["probability"] == pytest.approx(expected.probability, abs=1e-5)
    assert len(form.json()["top_k"]) == 2


def test_a_request_may_ask_for_more_classes(client: TestClient) -> None:
    answer = client.post("/predict?top_k=3", content=png(0), headers={"content-type": "image/png"})
    scores = [score["probability"] for score in answer.json()["top_k"]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    assert sum(scores) == pytest.approx(1.0, abs=1e-4)


def test_explain_returns_a_grad_cam_overlay_png(client: TestClient) -> None:
    assert client.get("/health").json()["explain"] is True
    answer = client.post("/explain", files={"file": ("x.png", png(1), "image/png")})
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
    overlay = Image.open(io.BytesIO(answer.content))
    assert overlay.format == "PNG" and overlay.size == (224, 224)  # 32 px enlarged 7x
    refused = client.post("/explain", content=b"text", headers={"content-type": "image/png"})
    assert refused.status_code == 400


def test_the_page_and_its_script_are_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'type="file"' in page.text and "/static/app.js" in page.text
    script = client.get("/static/app.js")
    assert script.status_code == 200 and "/predict" in script.text


@pytest.mark.parametrize("bad", bad_uploads(), ids=lambda bad: bad.name)
def test_bad_uploads_get_a_4xx_and_the_server_keeps_answering(client: TestClient, bad) -> None:  # type: ignore[no-untyped-def]
    answer = client.post("/predict", **bad.request)
    assert answer.status_code in bad.statuses, answer.text
    assert answer.json()["detail"]  # says what was wrong
    assert client.get("/health").status_code == 200
    assert client.post("/predict", content=png(1), headers={"content-type": "image/png"}).is_success


def test_explain_refuses_bad_uploads_as_predict_does(client: TestClient) -> None:
    for bad in bad_uploads():
        answer = client.post("/explain", **bad.request)
        assert answer.status_code in bad.statuses, (bad.name, answer.text)
        assert answer.json()["detail"]
    assert client.get("/health").status_code == 200


def test_the_upload_limit_is_configurable(tiny_run: Path) -> None:
    image = encoded_image("PNG", size=256)
    with TestClient(create_app(tiny_run, max_upload_bytes=len(image) - 1)) as small:
        refused = small.post("/predict", content=image, headers={"content-type": "image/png"})
        assert refused.status_code == 413 and "limit" in refused.json()["detail"]
    with TestClient(create_app(tiny_run, max_upload_bytes=len(image))) as exact:
        assert exact.post(
            "/predict", content=image, headers={"content-type": "image/png"}
        ).is_success


def test_concurrent_requests_get_the_answers_sequential_ones_get(client: TestClient) -> None:
    images = [png(index % 3, seed=index) for index in range(24)]

    def ask(image: bytes) -> list[dict[str, object]]:
        answer = client.post("/predict", files={"file": ("x.png", image, "image/png")})
        assert answer.status_code == 200
        return answer.json()["top_k"]  # type: ignore[no-any-return]

    sequential = [ask(image) for image in images]
    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(ask, images))
    for one, other in zip(sequential, concurrent, strict=True):
        assert [s["class_name"] for s in one] == [s["class_name"] for s in other]
        for a, b in zip(one, other, strict=True):
            assert a["probability"] == pytest.approx(b["probability"], abs=1e-5)


def single_colour(format_name: str, side: int) -> bytes:
    """A side x side image of one colour: a few KB on disk, side**2 pixels decoded."""
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (200, 40, 40)).save(buffer, format=format_name)
    return buffer.getvalue()


@pytest.mark.parametrize("format_name", ["PNG", "JPEG"])
def test_an_image_over_the_pixel_limit_is_refused_before_decoding(
    client: TestClient, format_name: str
) -> None:
    image = single_colour(format_name, 6000)  # 36 megapixels, over the default 25
    assert len(image) < 1_000_000  # far under the upload limit: only the pixels are too many
    answer = client.post("/predict", files={"file": ("big.img", image, "image/png")})
    assert answer.status_code == 413
    detail = answer.json()["detail"]
    assert "big.img" in detail and "6000x6000" in detail and "25.0 megapixels" in detail
    assert client.get("/health").status_code == 200
    assert (
        client.post("/explain", content=image, headers={"content-type": "image/png"}).status_code
        == 413
    )


def test_the_pixel_limit_is_configurable_and_checked(tiny_run: Path) -> None:
    image = single_colour("PNG", 100)
    with TestClient(create_app(tiny_run, max_pixels=100 * 100 - 1)) as small:
        assert small.get("/health").json()["max_pixels"] == 9999
        refused = small.post("/predict", content=image, headers={"content-type": "image/png"})
        assert refused.status_code == 413 and "100x100" in refused.json()["detail"]
    with TestClient(create_app(tiny_run, max_pixels=100 * 100)) as exact:
        assert exact.post(
            "/predict", content=image, headers={"content-type": "image/png"}
        ).is_success
    with pytest.raises(UserError, match=r"pixel limit 0 \(0 megapixels\): choose from 1 to"):
        create_app(tiny_run, max_pixels=0)


def test_a_big_jpeg_decodes_at_reduced_scale_and_predicts_like_the_file(
    client: TestClient, tiny_run: Path
) -> None:
    small = Image.fromarray(class_image(1, 32, seed=21))
    buffer = io.BytesIO()
    small.resize((4000, 3000), Image.Resampling.BICUBIC).save(buffer, format="JPEG", quality=90)
    photo = buffer.getvalue()  # 12 megapixels: under the limit
    drafted, info = decode_bytes(photo, 3, draft_size=64)
    assert (info.width, info.height) == (4000, 3000)
    assert tuple(drafted.shape) == (3, 375, 500)  # decoded at 1/8 scale, still over 64 px
    answer = client.post("/predict", content=photo, headers={"content-type": "image/jpeg"})
    assert answer.status_code == 200
    (expected,) = api.predict(tiny_run, photo, top_k=2)  # a full decode, as in training
    assert answer.json()["class_name"] == expected.class_name == "square"
    assert answer.json()["probability"] == pytest.approx(expected.probability, abs=0.05)


def test_workers_run_at_most_their_count_at_once() -> None:
    workers, lock = Workers(2), threading.Lock()
    running, most = 0, 0

    def work() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.02)  # sleep-ok: work long enough for the workers to overlap
        with lock:
            running -= 1

    async def main() -> None:
        async with anyio.create_task_group() as group:
            for _ in range(8):
                group.start_soon(workers.run, work)

    anyio.run(main)
    assert most == 2


def run_together(
    workers: Workers, seconds: list[float], events: list[str] | None = None
) -> list[int]:
    """Run a sleep of each length on `workers` at once; each one's status (200 or 503).
    `events` gets "start i" and "end i" as job i's thread begins and ends its work."""
    statuses = [0] * len(seconds)
    events = [] if events is None else events

    def job(index: int) -> None:
        events.append(f"start {index}")
        time.sleep(seconds[index])
        events.append(f"end {index}")

    async def one(index: int) -> None:
        try:
            await workers.run(job, index)
            statuses[index] = 200
        except HTTPException as error:
            assert error.headers == {"Retry-After": "1"}
            statuses[index] = error.status_code

    async def main() -> None:
        async with anyio.create_task_group() as group:
            for index in range(len(seconds)):
                group.start_soon(one, index)
                await anyio.sleep(0.05)  # sleep-ok: staggers the starts: they queue in this order

    anyio.run(main)
    return statuses


def test_work_over_the_decode_timeout_gets_503_but_keeps_its_slot_till_it_ends() -> None:
    """The first job outlives its 0.3 s: its caller gets 503 at once. Its thread cannot be
    stopped, so the second job (0.1 s) waits until it ends, and still finishes in time."""
    workers = Workers(1, queue_timeout=5.0, work_timeout=0.3)
    events: list[str] = []
    assert run_together(workers, [0.8, 0.1], events) == [503, 200]
    assert events == ["start 0", "end 0", "start 1", "end 1"]  # the second ran after the first


def test_an_upload_that_waits_longer_than_the_queue_timeout_gets_503() -> None:
    workers = Workers(1, queue_timeout=0.2, work_timeout=5.0)
    assert run_together(workers, [0.6, 0.1]) == [200, 503]


def test_the_api_docs_that_load_from_a_cdn_are_off(client: TestClient) -> None:
    assert client.get("/docs").status_code == 404
    assert client.get("/redoc").status_code == 404
    assert "/predict" in client.get("/openapi.json").json()["paths"]


async def post_in_chunks(
    app: FastAPI, content_type: str, chunks: list[bytes]
) -> tuple[int, dict[str, Any], int]:
    """POST /predict straight through ASGI, the body in chunks with no Content-Length (as
    `Transfer-Encoding: chunked` arrives): the status, the JSON answer, and how many chunks
    the app read."""
    sent: list[dict[str, Any]] = []
    read = 0

    async def receive() -> dict[str, Any]:
        nonlocal read
        read += 1
        more = read < len(chunks)
        return {"type": "http.request", "body": chunks[read - 1], "more_body": more}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/predict", "raw_path": b"/predict", "query_string": b"",
        "root_path": "", "headers": [(b"content-type", content_type.encode())],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
    }  # fmt: skip
    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body), read


@pytest.mark.parametrize("form", [False, True], ids=["raw body", "multipart form"])
def test_a_chunked_upload_over_the_limit_is_refused_while_it_streams(
    tiny_run: Path, form: bool
) -> None:
    limit, chunk = 64 * 1024, b"\xff" * 16 * 1024
    chunks = [chunk] * 64  # 1 MB in all, sixteen times the limit, never announced up front
    content_type = "image/jpeg"
    if form:
        boundary = "chunked-boundary"
        content_type = f"multipart/form-data; boundary={boundary}"
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            'filename="big.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
        ).encode()
        chunks = [head, *chunks, f"\r\n--{boundary}--\r\n".encode()]
    app = create_app(tiny_run, max_upload_bytes=limit)
    status, answer, read = anyio.run(post_in_chunks, app, content_type, chunks)
    assert status == 413 and "limit" in answer["detail"]
    assert read <= limit // len(chunk) + 2  # stopped reading soon after the limit


def test_waiting_for_the_busy_model_does_not_count_against_the_decode_timeout(
    tiny_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four uploads at once, the model taking 0.25 s each: the last waits 0.75 s for it, over
    the 0.3 s decode timeout, yet all four are answered (the timeout is for decoding)."""
    predictor = Predictor.from_run(tiny_run, "cpu")
    real_score = predictor.score
    model_calls = []

    def slow_score(pixels: Any, unfamiliar: bool = True) -> Any:
        model_calls.append(len(pixels))
        with predictor.lock:  # as a slow model would hold it
            time.sleep(0.25)  # sleep-ok: a slow model holding the lock
        return real_score(pixels, unfamiliar)

    monkeypatch.setattr(predictor, "score", slow_score)
    monkeypatch.setattr("torchgraft.serve.app.default_workers", lambda: 4)
    unbatched = ServerSettings(decode_timeout=0.3, max_batch=1)  # four calls, one after another
    app = create_app(predictor, settings=unbatched)
    with TestClient(app) as test_client, ThreadPoolExecutor(max_workers=4) as pool:
        post = partial(test_client.post, "/predict", headers={"content-type": "image/png"})
        answers = list(
            pool.map(lambda image: post(content=image), [png(0, seed) for seed in range(4)])
        )
    assert [answer.status_code for answer in answers] == [200] * 4, answers[-1].text
    assert model_calls == [1, 1, 1, 1]


async def receive_body(
    deadline: BodyDeadline, chunk: bytes, chunks: int, every: float
) -> tuple[int, bytes, int]:
    """Send `chunks` copies of `chunk`, one every `every` s, through `deadline` to an app that
    reads the whole body; the status, the body the app read (or the 408's detail), and how
    many chunks were sent."""
    sent = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        await anyio.sleep(every)
        sent += 1
        return {"type": "http.request", "body": chunk, "more_body": sent < chunks}

    async def reader(scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message["body"]
            if not message["more_body"]:
                break
        await send({"status": 200, "body": body})

    answer: dict[str, Any] = {}

    async def send(message: dict[str, Any]) -> None:
        answer.update(message)

    deadline.app = reader
    try:
        await deadline({"type": "http"}, receive, send)
    except HTTPException as error:
        return error.status_code, str(error.detail).encode(), sent
    return answer["status"], answer["body"], sent


def test_a_body_that_keeps_the_minimum_rate_may_take_longer_than_the_grace() -> None:
    """8 KB at 10 KB/s takes 0.8 s: past the 0.3 s grace, but above 2 KB/s, so it is read."""
    deadline = BodyDeadline(None, grace_seconds=0.3, min_rate=2000)  # type: ignore[arg-type]
    status, body, _ = anyio.run(receive_body, deadline, b"x" * 1000, 8, 0.1)
    assert status == 200 and body == b"x" * 8000


def test_a_body_slower_than_the_minimum_rate_gets_408_soon_after_the_grace() -> None:
    deadline = BodyDeadline(None, grace_seconds=0.3, min_rate=2000)  # type: ignore[arg-type]
    status, detail, sent = anyio.run(receive_body, deadline, b"x" * 10, 100, 0.1)  # 100 B/s
    assert status == 408 and b"must average at least 1.95312 KiB/s" in detail
    assert sent < 100  # cut off, not read to its end 10 s later

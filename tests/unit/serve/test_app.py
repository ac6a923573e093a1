"""The HTTP app through FastAPI's TestClient: answers, refusals, and concurrent requests."""

from __future__ import annotations

import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from torchgraft import api
from torchgraft.serve.app import create_app
from torchgraft.serve.bad_uploads import bad_uploads, encoded
from torchgraft.testing import DEFAULT_CLASSES, class_image


def png(label: int, seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(class_image(label, 32, seed=seed)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def client(tiny_run: Path) -> Iterator[TestClient]:
    with TestClient(create_app(tiny_run, top_k=2)) as test_client:
        yield test_client


def test_health_names_the_model_and_its_classes(client: TestClient) -> None:
    health = client.get("/health")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok" and body["model"] == "cnn"
    assert body["classes"] == list(DEFAULT_CLASSES) and body["top_k"] == 2


def test_multipart_and_raw_uploads_get_the_same_top_k(client: TestClient, tiny_run: Path) -> None:
    image = png(2, seed=11)
    form = client.post("/predict", files={"file": ("shape.png", image, "image/png")})
    raw = client.post("/predict", content=image, headers={"content-type": "image/png"})
    assert form.status_code == raw.status_code == 200
    assert form.json()["source"] == "shape.png" and raw.json()["source"] == "upload"
    assert form.json()["top_k"] == raw.json()["top_k"]
    (expected,) = api.predict(tiny_run, Image.open(io.BytesIO(image)), top_k=2)
    assert form.json()["class_name"] == expected.class_name == "triangle"
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


def test_there_are_twenty_distinct_bad_uploads() -> None:
    names = [bad.name for bad in bad_uploads()]
    assert len(names) == len(set(names)) == 20


def test_the_upload_limit_is_configurable(tiny_run: Path) -> None:
    image = encoded("PNG", size=256)
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

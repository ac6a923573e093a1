"""Dynamic batching: who shares a model call, that each request gets its own row, and that the
batched server answers as an unbatched one does; GET /metrics in Prometheus' format."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.unit.serve.test_app import png
from torchgraft.errors import UserError
from torchgraft.serve.app import create_app
from torchgraft.serve.batching import Batcher
from torchgraft.serve.predictor import Scores
from torchgraft.serve.server import ServerSettings


class MarkerModel:
    """A stand-in model: each image is one pixel holding a number, and its 'probabilities'
    repeat that number, so a request can tell whether it got its own row."""

    def __init__(self, fail: bool = False) -> None:
        self.batches: list[int] = []
        self.fail = fail

    async def __call__(self, batch: torch.Tensor) -> Scores:
        self.batches.append(len(batch))
        await asyncio.sleep(
            0
        )  # sleep-ok: yields to the loop, as the thread hop of a real call does
        if self.fail:
            raise RuntimeError("the model broke")
        markers = batch.reshape(len(batch), -1)[:, :1].float().numpy()
        return Scores(np.repeat(markers, 3, axis=1), None)


def marker(value: int) -> torch.Tensor:
    return torch.full((1, 1, 1), value, dtype=torch.uint8)


async def score_all(batcher: Batcher, values: list[int]) -> list[float]:
    """Score one marker image per value, all at once; the number each request read back."""
    answers = await asyncio.gather(*(batcher.score(marker(value)) for value in values))
    return [float(scores.probabilities[row, 0]) for scores, row in answers]


def test_images_arriving_together_share_a_call_and_each_gets_its_own_row() -> None:
    model = MarkerModel()
    batcher = Batcher(model, max_batch=16, max_wait=0.05)
    values = list(range(10, 20))
    assert asyncio.run(score_all(batcher, values)) == values
    assert model.batches == [10]


def test_a_batch_never_exceeds_max_batch() -> None:
    model = MarkerModel()
    values = list(range(20))
    assert asyncio.run(score_all(Batcher(model, max_batch=8, max_wait=0.05), values)) == values
    assert model.batches == [8, 8, 4]


def test_max_batch_1_gives_every_image_a_call_of_its_own() -> None:
    model = MarkerModel()
    values = list(range(5))
    assert asyncio.run(score_all(Batcher(model, max_batch=1, max_wait=0.05), values)) == values
    assert model.batches == [1] * 5


def test_an_image_alone_waits_no_longer_than_max_wait() -> None:
    async def alone() -> float:
        batcher = Batcher(MarkerModel(), max_batch=16, max_wait=0.02)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await batcher.score(marker(1))
        return loop.time() - started

    assert asyncio.run(alone()) < 1.0  # 0.02 s and a little; never the whole batch's wait


def test_a_failed_call_reaches_every_request_in_it_and_the_next_batch_still_runs() -> None:
    model = MarkerModel(fail=True)
    batcher = Batcher(model, max_batch=4, max_wait=0.05)

    async def fail_then_recover() -> list[float]:
        outcomes = await asyncio.gather(
            *(batcher.score(marker(value)) for value in range(3)), return_exceptions=True
        )
        assert all(isinstance(outcome, RuntimeError) for outcome in outcomes), outcomes
        model.fail = False
        return await score_all(batcher, [7, 8])

    assert asyncio.run(fail_then_recover()) == [7, 8]
    assert model.batches == [3, 2]


def test_a_request_that_gave_up_is_left_out_of_the_batch() -> None:
    model = MarkerModel()
    batcher = Batcher(model, max_batch=8, max_wait=0.05)

    async def one_gives_up() -> list[float]:
        quitter = asyncio.ensure_future(batcher.score(marker(99)))
        await asyncio.sleep(
            0
        )  # sleep-ok: one turn of the loop, so that it joins the waiting images
        quitter.cancel()
        return await score_all(batcher, [1, 2])

    assert asyncio.run(one_gives_up()) == [1, 2]
    assert model.batches == [2]


@pytest.mark.parametrize("settings", [{"max_batch": 0}, {"max_wait": -0.001}, {"max_wait": 5.0}])
def test_batching_settings_out_of_range_are_refused(settings: dict[str, float]) -> None:
    with pytest.raises(UserError, match="max"):
        ServerSettings(**settings)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def batched(tiny_run: Path) -> Iterator[TestClient]:
    """A server that waits long enough (0.2 s) for concurrent uploads to share a call."""
    settings = ServerSettings(max_batch=16, max_wait=0.2)
    with TestClient(create_app(tiny_run, top_k=3, settings=settings)) as client:
        yield client


def metric_samples(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of GET /metrics, parsed by prometheus_client's own parser."""
    answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def test_the_batched_server_answers_each_request_as_an_unbatched_one_does(
    batched: TestClient, tiny_run: Path
) -> None:
    images = [png(index % 3, seed=index) for index in range(12)]
    unbatched_app = create_app(tiny_run, top_k=3, settings=ServerSettings(max_batch=1))
    with TestClient(unbatched_app) as unbatched:
        alone = [post(unbatched, image) for image in images]
    calls_before = metric_samples(batched)[("graft_batch_size_count", ())]
    with ThreadPoolExecutor(max_workers=len(images)) as pool:
        together = list(pool.map(lambda image: post(batched, image), images))
    samples = metric_samples(batched)
    calls = samples[("graft_batch_size_count", ())] - calls_before
    assert calls < len(images)  # some requests did share a model call
    for one, other in zip(alone, together, strict=True):
        assert [s["class_name"] for s in one] == [s["class_name"] for s in other]
        # Same classes in the same order; probabilities equal to float rounding, not to the
        # bit: a convolution over a batch of 12 may sum in another order than over one
        # image (3.1091935e-11 against 3.1091994e-11 on a near-zero class here).
        for a, b in zip(one, other, strict=True):
            assert b["probability"] == pytest.approx(a["probability"], rel=1e-5, abs=1e-9)


def post(client: TestClient, image: bytes) -> list[dict[str, object]]:
    answer = client.post("/predict", content=image, headers={"content-type": "image/png"})
    assert answer.status_code == 200, answer.text
    return answer.json()["top_k"]  # type: ignore[no-any-return]


def test_metrics_count_requests_errors_latency_and_batch_sizes(tiny_run: Path) -> None:
    with TestClient(create_app(tiny_run)) as client:
        for seed in range(3):
            post(client, png(0, seed))
        refused = client.post(
            "/predict", content=b"not an image", headers={"content-type": "image/png"}
        )
        assert refused.status_code == 400
        client.get("/health")
        samples = metric_samples(client)
    predict_200 = ("endpoint", "/predict"), ("code", "200")
    predict_400 = ("endpoint", "/predict"), ("code", "400")
    assert samples[("graft_requests_total", tuple(sorted(predict_200)))] == 3
    assert samples[("graft_requests_total", tuple(sorted(predict_400)))] == 1
    assert samples[("graft_errors_total", tuple(sorted(predict_400)))] == 1
    assert ("graft_errors_total", tuple(sorted(predict_200))) not in samples
    assert samples[("graft_request_duration_seconds_count", (("endpoint", "/predict"),))] == 4
    assert samples[("graft_request_duration_seconds_count", (("endpoint", "/health"),))] == 1
    assert samples[("graft_batch_size_sum", ())] == 3  # the images that reached the model
    assert samples[("graft_uploads_in_progress", ())] == 0

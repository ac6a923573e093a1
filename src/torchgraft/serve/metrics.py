"""GET /metrics in Prometheus' text format: requests by endpoint and status code, their
latency, errors, the size of each model call's batch, and the uploads in progress.

Each app keeps its own registry (not prometheus_client's global one), so two apps in one
process, as in the tests, count separately. The counting is an ASGI middleware: it sees
every answer, the 4xx raised before an endpoint runs and the 408 of `BodyDeadline` too.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from torchgraft.serve.limits import Message, Receive, Scope, Send

# The endpoints counted; anything else (the page, static files, 404s) is left out, so that
# probing odd paths cannot grow the number of series.
COUNTED = ("/predict", "/explain", "/health")
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """The server's counters, in a registry of their own."""

    def __init__(self, uploads_in_progress: Callable[[], float]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "graft_requests", "HTTP requests answered, by endpoint and status code",
            ["endpoint", "code"], registry=self.registry,
        )  # fmt: skip
        self.errors = Counter(
            "graft_errors", "Requests answered with a 4xx or 5xx status, by endpoint and code",
            ["endpoint", "code"], registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "graft_request_duration_seconds", "Time from request to complete answer",
            ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.batch_size = Histogram(
            "graft_batch_size", "Images per model call", buckets=BATCH_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        pending = Gauge(
            "graft_uploads_in_progress", "Uploads being read, decoded, waiting or classified",
            registry=self.registry,
        )  # fmt: skip
        pending.set_function(uploads_in_progress)

    def answered(self, endpoint: str, code: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(code)).inc()
        if code >= 400:
            self.errors.labels(endpoint, str(code)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def text(self) -> bytes:
        return generate_latest(self.registry)


class CountRequests:
    """ASGI middleware: records each answer to a counted endpoint in `metrics`, once its last
    byte is sent (or when the app fails, as 500)."""

    def __init__(
        self, app: Callable[[Scope, Receive, Send], Awaitable[None]], metrics: Metrics
    ) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = scope.get("path", "")
        if scope["type"] != "http" or endpoint not in COUNTED:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        code = 500  # what the client gets if the app raises before answering

        async def counting_send(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.metrics.answered(endpoint, code, time.perf_counter() - started)

"""Running the app under uvicorn so that no client can starve it.

uvicorn's own `limit_concurrency` counts open connections, idle ones included: with it at 64,
64 sockets that send nothing made every request, `/health` too, answer 503. So here:

- a connection must send a complete request head within `idle_timeout` seconds of opening,
  and of each answer (a fresh socket that sends nothing, or a header sent a byte at a time,
  is closed; uvicorn's own keep-alive timer starts only after a first answer and restarts
  on every byte);
- the connection limit is high (`max_connections`), since idle sockets no longer last;
- what costs memory and CPU, the uploads to /predict and /explain, is limited in the app
  (`max_pending`), which answers 503 with Retry-After beyond it; `/health` is never queued;
- after `body_timeout` seconds, a request body must keep arriving at `min_body_rate` bytes a
  second on average (the app's `BodyDeadline`), or it gets 408.

uvicorn is imported inside `serve_app`: `import torchgraft.serve` does not pay for it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from torchgraft.errors import UserError

if TYPE_CHECKING:
    from fastapi import FastAPI


@dataclass(frozen=True)
class ServerSettings:
    """What a client may cost the server: time, connections and queued uploads."""

    # A request body gets `body_timeout` seconds of grace, then must average `min_body_rate`
    # bytes a second (then 408): 32 KiB/s (256 kbit/s, a poor mobile link) takes a 10 MB
    # upload in 10 + 320 s, and cuts a client sending a byte a second after about 10 s.
    body_timeout: float = 10.0
    min_body_rate: float = 32 * 1024
    decode_timeout: float = 10.0  # seconds one upload may take to decode and resize (503)
    idle_timeout: float = 5.0  # seconds a connection may stay open with no request head sent
    queue_timeout: float = 30.0  # seconds an upload may wait for a free worker (then 503)
    # Uploads being read, waiting or classified at once; more get 503 at once. Each may hold
    # up to max_upload_bytes in memory (64 x 10 MB = 640 MB at most).
    max_pending: int = 64
    max_connections: int = 1024  # open connections in all; beyond, uvicorn answers 503
    # Uploads that arrive within max_wait seconds of each other share one model call of at
    # most max_batch images (serve.batching); max_batch 1 turns batching off.
    max_batch: int = 16
    max_wait: float = 0.005

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name != "max_wait" and not value > 0:  # max_wait 0: no waiting
                raise UserError(f"server setting {field.name} must be positive, got {value}")
        if not 0 <= self.max_wait <= 1:
            raise UserError(
                f"max wait {self.max_wait:g} s: choose from 0 to 1 second (a few milliseconds "
                "is usual)"
            )


def idle_timeout_protocol(idle_timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol, closing connections that send no complete request head in time.

    uvicorn arms its keep-alive timer only after an answer and cancels it on any data, so a
    socket that never sends, or sends a byte now and then, stays open for ever. Here the
    timer also starts when the connection opens and is only cancelled once a whole request
    head has arrived; after an answer it runs for `idle_timeout` too (uvicorn's
    `timeout_keep_alive` takes whole seconds only).
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class IdleTimeoutH11Protocol(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.timeout_keep_alive = idle_timeout  # type: ignore[assignment]  # a float is fine
            self.timeout_keep_alive_task = self.loop.call_later(
                idle_timeout, self.timeout_keep_alive_handler
            )

        def data_received(self, data: bytes) -> None:
            timer, self.timeout_keep_alive_task = self.timeout_keep_alive_task, None
            super().data_received(data)  # no longer cancels the timer: it is not there
            request_started = self.cycle is not None and not self.cycle.response_complete
            if self.timeout_keep_alive_task is None and not request_started:
                self.timeout_keep_alive_task = timer  # still waiting for a whole head
            elif timer is not None:
                timer.cancel()

    return IdleTimeoutH11Protocol


def server_config(
    app: FastAPI, host: str, port: int, settings: ServerSettings, access_log: bool = False
) -> Any:
    """The uvicorn.Config serving `app` under `settings`. `access_log` prints a line per
    request: off by default, since under load it cost a quarter of the throughput here
    (302 against 223 requests/s); GET /metrics counts the requests instead."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=idle_timeout_protocol(settings.idle_timeout),
        limit_concurrency=settings.max_connections,
        log_level="info",
        access_log=access_log,
    )


def serve_app(
    app: FastAPI, host: str, port: int, settings: ServerSettings, access_log: bool = False
) -> None:
    """Serve `app` until Ctrl-C (uvicorn shuts down gracefully, then re-raises it)."""
    import uvicorn

    uvicorn.Server(server_config(app, host, port, settings, access_log)).run()

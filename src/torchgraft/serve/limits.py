"""What a client may cost the app: a worker thread, a place among the uploads in progress,
and the time its body takes to arrive. Beyond any of them, an answer at once (503 with
Retry-After, or 408), never a hang.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
from fastapi import HTTPException

T = TypeVar("T")
RETRY_AFTER_SECONDS = 1  # what a 503 asks the client to wait: a worker frees in about that


def busy(reason: str) -> HTTPException:
    """503 with Retry-After: the server cannot take this upload now, but will soon."""
    return HTTPException(
        503, f"server busy: {reason}; try again shortly",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )  # fmt: skip


class Workers:
    """Runs blocking work (decoding an upload) in threads, at most `count` at a time, each
    within `work_timeout`.

    Starlette's thread pool alone would let 40 big uploads decode at once; the extra ones here
    wait in the event loop, holding no thread and no decoded pixels, for `queue_timeout` at
    most. Work still running after `work_timeout` cannot be stopped (a thread cannot be
    killed), so its caller gets a 503 and the thread is left to finish: it keeps its slot
    until it does, so no more than `count` threads ever run. The semaphore is made on first
    use, inside the event loop that serves the requests.
    """

    def __init__(self, count: int, queue_timeout: float = 30.0, work_timeout: float = 10.0):
        self.count = count
        self.queue_timeout = queue_timeout
        self.work_timeout = work_timeout
        self._pools: tuple[anyio.Semaphore, anyio.CapacityLimiter] | None = None

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        if self._pools is None:  # the slots, and threads to match (the default pool is shared)
            self._pools = anyio.Semaphore(self.count), anyio.CapacityLimiter(self.count)
        slots, threads = self._pools
        with anyio.move_on_after(self.queue_timeout) as waiting:
            await slots.acquire()
        if waiting.cancelled_caught:
            raise busy(f"no worker became free within {self.queue_timeout:g} s")
        job = SlotJob(function, args, slots, anyio.lowlevel.current_token())
        try:
            with anyio.move_on_after(self.work_timeout):
                return await anyio.to_thread.run_sync(
                    job.run, limiter=threads, abandon_on_cancel=True
                )
        finally:
            if job.stop_waiting():
                slots.release()
        raise busy(f"decoding took longer than {self.work_timeout:g} s")


class SlotJob:
    """One piece of work holding a worker slot, given back exactly once.

    Normally the event loop gives it back when its caller stops waiting (a result, an
    error). Only when the caller gave up while the thread still ran (a timeout) does the
    thread give it back, when it ends: a thread that must call into the event loop for
    every job would wait there whenever the loop is busy, and that cost a quarter of the
    throughput under load.
    """

    def __init__(
        self, function: Callable[..., Any], args: tuple[Any, ...], slots: anyio.Semaphore,
        token: anyio.lowlevel.EventLoopToken,
    ) -> None:  # fmt: skip
        self.function, self.args, self.slots, self.token = function, args, slots, token
        # queued -> running -> done; "abandoned" before it ran, "orphaned" while it ran
        self._state = "queued"
        self._lock = threading.Lock()

    def run(self) -> Any:
        with self._lock:
            if self._state == "abandoned":
                return None  # its caller gave up, and the loop already gave the slot back
            self._state = "running"
        try:
            return self.function(*self.args)
        finally:
            with self._lock:
                orphaned = self._state == "orphaned"
                self._state = "done"
            if orphaned:
                with contextlib.suppress(anyio.RunFinishedError):  # the server stopped meanwhile
                    anyio.from_thread.run_sync(self.slots.release, token=self.token)

    def stop_waiting(self) -> bool:
        """Called in the event loop when the caller stops waiting, for whatever reason. True
        when the loop is to give the slot back now; False when the thread still runs and
        gives it back itself when it ends."""
        with self._lock:
            running = self._state == "running"
            self._state = "orphaned" if running else "abandoned"
        return not running


class ModelTurns:
    """Runs model calls in a thread, one at a time and untimed; callers wait their turn in the
    event loop, holding no thread.

    The model runs one batch at a time anyway (the Predictor's lock). Waiting for it is no
    fault of the upload, so `Workers.work_timeout` must not count it: with the model busy,
    healthy traffic would get 503. How many wait is bounded by `Pending`. The limiter is
    made on first use, inside the event loop that serves the requests.
    """

    def __init__(self) -> None:
        self._limiter: anyio.CapacityLimiter | None = None

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(1)
        return await anyio.to_thread.run_sync(function, *args, limiter=self._limiter)


class Pending:
    """Counts the uploads in progress (being read, waiting or classified); beyond `limit`,
    a new one gets 503 at once, before its body is read. Used in the event loop only."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        if self.count >= self.limit:
            raise busy(f"{self.limit} uploads already in progress")
        self.count += 1
        try:
            yield
        finally:
            self.count -= 1


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BodyDeadline:
    """ASGI middleware: after a grace of `grace_seconds`, a request body must keep arriving
    at `min_rate` bytes a second on average, or the request gets 408 and its connection is
    closed.

    uvicorn waits for a body for ever, so a client sending a byte a second would hold a
    connection, and an upload slot, for as long as it likes. A fixed deadline for the whole
    body would fail honest uploads over slow links (10 MB in 30 s needs 2.8 Mbit/s), and a
    deadline per chunk is one such a client never misses. So the next chunk is due by
    start + grace + bytes_so_far / min_rate: at 1 byte a second that is the grace and a
    little more; at min_rate or faster, never. It needs no Content-Length (chunked bodies
    are timed the same). Once the body is in, later `receive` calls (waiting for a
    disconnect) pass through untimed.
    """

    def __init__(
        self, app: Callable[[Scope, Receive, Send], Awaitable[None]], grace_seconds: float,
        min_rate: float,
    ) -> None:  # fmt: skip
        self.app = app
        self.grace_seconds = grace_seconds
        self.min_rate = min_rate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = anyio.current_time()
        received = 0
        body_done = False

        async def timed_receive() -> Message:
            nonlocal body_done, received
            if body_done:
                return await receive()
            due = started + self.grace_seconds + received / self.min_rate
            with anyio.move_on_after(due - anyio.current_time()):
                message = await receive()
                received += len(message.get("body", b""))
                body_done = message["type"] != "http.request" or not message.get("more_body")
                return message
            raise self.too_slow(received, anyio.current_time() - started)

        await self.app(scope, timed_receive, send)

    def too_slow(self, received: int, seconds: float) -> HTTPException:
        return HTTPException(
            408, f"the request body did not arrive in time: {received} bytes in {seconds:.1f} s; "
            f"after the first {self.grace_seconds:g} s it must average at least "
            f"{self.min_rate / 1024:g} KiB/s",
            headers={"Connection": "close"},
        )  # fmt: skip

"""Dynamic batching: uploads that arrive close together share one model call.

A model call on one image costs nearly as much as on several (EfficientNet-Lite0 at 64 px on
two CPU cores: 11.5 ms for one image, 28 ms for sixteen), so under load the server gathers
the decoded images of concurrent requests into one batch, as TorchServe and LitServe do. An
image waits for company at most `max_wait` seconds from its arrival, and never once
`max_batch` images are waiting; while the model runs, the next batch gathers by itself.
`max_batch=1` turns batching off: each image gets a model call of its own.

Each request gets exactly the row of the batch that belongs to its image. The model runs in
a thread, one call at a time (`ModelTurns`), so Grad-CAM calls take their turn between
batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import torch

from torchgraft.serve.predictor import Scores

logger = logging.getLogger(__name__)

RunModel = Callable[[torch.Tensor], Awaitable[Scores]]


@dataclass
class Waiting:
    """One decoded image waiting for its model call, and where its answer goes."""

    pixels: torch.Tensor  # (C, S, S) uint8
    answer: asyncio.Future[tuple[Scores, int]]
    arrived: float  # the event loop's clock


@dataclass
class Batcher:
    """Gathers images from concurrent requests into batches for `run_model`.

    `run_model` takes a (N, C, S, S) uint8 batch and returns its Scores; `on_batch` hears
    each batch's size (for /metrics). The settings are checked once, by `ServerSettings`.
    The gathering task starts on first use, inside the event loop that serves the requests,
    and again if that loop changes (a test client).
    """

    run_model: RunModel
    max_batch: int = 16
    max_wait: float = 0.005  # seconds an image may wait for others to join its batch
    on_batch: Callable[[int], None] = lambda size: None
    _waiting: list[Waiting] = field(default_factory=list, init=False)
    _arrived: asyncio.Event | None = field(default=None, init=False)
    _task: asyncio.Task[None] | None = field(default=None, init=False)

    async def score(self, pixels: torch.Tensor) -> tuple[Scores, int]:
        """The Scores of the batch that classified `pixels`, and the row that is its own."""
        loop = asyncio.get_running_loop()
        self._start(loop)
        assert self._arrived is not None
        waiting = Waiting(pixels, loop.create_future(), loop.time())
        self._waiting.append(waiting)
        self._arrived.set()
        return await waiting.answer

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._task is not None and not self._task.done() and self._task.get_loop() is loop:
            return
        self._waiting, self._arrived = [], asyncio.Event()
        self._task = loop.create_task(self._gather_forever(), name="torchgraft-batcher")

    async def _gather_forever(self) -> None:
        while True:
            batch = await self._next_batch()
            live = [waiting for waiting in batch if not waiting.answer.done()]  # not given up
            if live:
                await self._classify(live)

    async def _next_batch(self) -> list[Waiting]:
        """Up to `max_batch` waiting images, once the oldest has waited `max_wait` or the
        batch is full."""
        assert self._arrived is not None
        while not self._waiting:
            self._arrived.clear()
            await self._arrived.wait()
        loop = asyncio.get_running_loop()
        deadline = self._waiting[0].arrived + self.max_wait
        while len(self._waiting) < self.max_batch and loop.time() < deadline:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), deadline - loop.time())
        batch, self._waiting = self._waiting[: self.max_batch], self._waiting[self.max_batch :]
        return batch

    async def _classify(self, batch: list[Waiting]) -> None:
        self.on_batch(len(batch))
        try:
            scores = await self.run_model(torch.stack([waiting.pixels for waiting in batch]))
        except Exception as error:  # every request of the batch hears it; the batcher lives on
            logger.exception("a batch of %d images failed", len(batch))
            for waiting in batch:
                if not waiting.answer.done():
                    waiting.answer.set_exception(error)
            return
        for row, waiting in enumerate(batch):
            if not waiting.answer.done():
                waiting.answer.set_result((scores, row))

"""The HTTP app: POST /predict, POST /explain (Grad-CAM), GET /health, GET /metrics
(Prometheus), and GET / (a page to drop an image on).

The model is loaded once, when the app is created. Each upload is decoded in a worker thread
by the same rules as training data (`torchgraft.data.decode`); decoded uploads that arrive
within a few milliseconds of each other share one model call (`serve.batching`), and the
model runs one call at a time, so concurrent requests are safe. Bad input gets a 4xx with a
JSON `detail` saying what was wrong; it never costs a 500 or the server.

Memory is bounded three ways: uploads by bytes (`max_upload_bytes`), decoded images by
pixels (`max_pixels`, read from the header before decoding), and the number of uploads in
progress (`ServerSettings.max_pending`; beyond it, 503 with Retry-After). About one upload per
CPU decodes and classifies at once; the rest wait without holding a thread. Time is bounded
too: after `body_timeout` a body must keep arriving at `min_body_rate` (408), an upload
waits for a worker at most `queue_timeout` and is decoded within `decode_timeout` (503 with
Retry-After); its wait for the model, which runs one call at a time, is not timed.
`/health` takes no part in any of this, so it answers while uploads queue.

There is no authentication: put the server behind a reverse proxy for that (README.md).
The interactive API docs (/docs, /redoc) are off: Swagger UI and ReDoc load from a CDN.

FastAPI is imported here and only here: `import torchgraft` does not pay for it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

from torchgraft.artifact import Run
from torchgraft.data.decode import (
    MAX_PIXELS,
    TooManyPixels,
    UnreadableImage,
    allowed_formats,
    decode_bytes,
)
from torchgraft.devices import usable_cpus
from torchgraft.errors import UserError
from torchgraft.serve.batching import Batcher
from torchgraft.serve.limits import BodyDeadline, ModelTurns, Pending, Workers
from torchgraft.serve.metrics import CountRequests, Metrics
from torchgraft.serve.predictor import Predictor
from torchgraft.serve.server import ServerSettings
from torchgraft.serve.uploads import Upload, read_upload

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
DEFAULT_MAX_UPLOAD_BYTES = 10 * 2**20  # 10 MB: a large phone photo is 3 to 8 MB
# 25 megapixels: a 12 MP phone photo (4032x3024) passes; a PNG that decodes to this size
# takes about 75 MB as RGB, and a few times that while it is converted and resized.
DEFAULT_MAX_PIXELS = 25_000_000
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def create_app(
    run: Run | str | Path | Predictor,
    *,
    device: str = "cpu",
    class_names: str | Path | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    top_k: int = 5,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    settings: ServerSettings | None = None,
) -> FastAPI:
    """The app for a run (or an already loaded Predictor). `top_k` is the default number of
    classes each answer lists; a request may ask for another with ?top_k=N. Images whose
    header declares more than `max_pixels` are refused with 413 before they are decoded.
    `settings` holds the timeouts and the limit on uploads in progress."""
    check_max_pixels(max_pixels)
    allowed_formats()  # a bad $TORCHGRAFT_EXTRA_IMAGE_FORMATS stops the start, not each upload
    settings = settings or ServerSettings()
    predictor = (
        run
        if isinstance(run, Predictor)
        else Predictor.from_run(run, device, class_names=class_names)
    )
    app = FastAPI(
        title=f"torchgraft: {predictor.info.model_name} ({predictor.run.path.name})",
        description="Upload an image to POST /predict; GET / is a page to try it in a browser.",
        docs_url=None,  # Swagger UI and ReDoc load their scripts from a CDN: no page that
        redoc_url=None,  # phones home; /openapi.json still describes the API
    )
    app.add_middleware(
        BodyDeadline, grace_seconds=settings.body_timeout, min_rate=settings.min_body_rate
    )
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    explainable = can_explain(predictor)
    workers = Workers(default_workers(), settings.queue_timeout, settings.decode_timeout)
    limits = Limits(
        max_upload_bytes, max_pixels, workers, ModelTurns(), Pending(settings.max_pending)
    )
    metrics = Metrics(uploads_in_progress=lambda: limits.pending.count)
    app.add_middleware(CountRequests, metrics=metrics)  # outermost: sees the 408s too
    batcher = Batcher(
        lambda batch: limits.model.run(predictor.score, batch),
        settings.max_batch, settings.max_wait, on_batch=metrics.batch_size.observe,
    )  # fmt: skip

    @app.get("/health")
    async def health() -> dict[str, Any]:  # in the event loop: no thread, so never queued
        return {**health_info(predictor, top_k, limits), "explain": explainable}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return Response(metrics.text(), media_type=PROMETHEUS_TEXT)

    add_predict(app, predictor, top_k, limits, batcher)
    if explainable:
        add_explain(app, predictor, limits)
    return app


def check_max_pixels(max_pixels: int) -> None:
    if not 1 <= max_pixels <= MAX_PIXELS:
        raise UserError(
            f"pixel limit {max_pixels} ({max_pixels / 1e6:g} megapixels): choose from 1 to "
            f"{MAX_PIXELS} ({MAX_PIXELS / 1e6:.1f} megapixels, Pillow's decompression-bomb limit)"
        )


def default_workers() -> int:
    """How many uploads decode at once: one per CPU this process may use."""
    return usable_cpus()


@dataclass(frozen=True)
class Limits:
    """What one request may cost: upload bytes, decoded pixels, a worker to decode in, a turn
    with the model, and a place among the uploads in progress."""

    max_upload_bytes: int
    max_pixels: int
    workers: Workers
    model: ModelTurns
    pending: Pending


def add_predict(
    app: FastAPI, predictor: Predictor, top_k: int, limits: Limits, batcher: Batcher
) -> None:
    @app.post("/predict")
    async def predict(request: Request, top_k: int = Query(top_k, ge=1, le=1000)) -> dict[str, Any]:
        """Top-k classes for one image: a multipart file field, or the raw bytes as the body."""
        started = time.perf_counter()
        with limits.pending.slot():
            upload = await read_upload(request, limits.max_upload_bytes)
            pixels = await limits.workers.run(decode_upload, predictor, upload, limits.max_pixels)
            scores, row = await batcher.score(pixels)
        k = min(top_k, predictor.info.num_classes)
        record = predictor.prediction(upload.name, scores, row, k)
        return {**record.to_dict(), "milliseconds": (time.perf_counter() - started) * 1000}


def add_explain(app: FastAPI, predictor: Predictor, limits: Limits) -> None:
    @app.post("/explain", response_class=Response)
    async def explain(request: Request) -> Response:
        """Grad-CAM for one image (uploaded as for /predict): the overlay as a PNG, showing
        where the network found the evidence for its predicted class."""
        with limits.pending.slot():
            upload = await read_upload(request, limits.max_upload_bytes)
            pixels = await limits.workers.run(decode_upload, predictor, upload, limits.max_pixels)
            png = await limits.model.run(explain_pixels, predictor, pixels)
        return Response(png, media_type="image/png")


def health_info(predictor: Predictor, top_k: int, limits: Limits) -> dict[str, Any]:
    """What a load balancer or the page needs to know about the loaded model."""
    info, familiarity = predictor.info, predictor.familiarity
    return {
        "status": "ok",
        "model": info.model_name,
        "run": predictor.run.path.name,
        "classes": info.class_names,
        "display_names": predictor.display_names,
        "image_size": info.preprocessing.image_size,
        "device": str(predictor.device),
        "engine": predictor.engine,  # eager, or the export format that classifies
        # An answer's `unfamiliar` score above this flags it; None: answers have no score.
        "unfamiliar_threshold": None if familiarity is None else familiarity.threshold,
        "top_k": top_k,
        "max_upload_bytes": limits.max_upload_bytes,
        "max_pixels": limits.max_pixels,
        "uploads_in_progress": limits.pending.count,  # beyond max_pending: 503
        "max_pending": limits.pending.limit,
    }


def decode_upload(predictor: Predictor, upload: Upload, max_pixels: int) -> torch.Tensor:
    """The upload decoded and resized as the model's uint8 input; 400 if it won't decode, 413 if
    it has more than `max_pixels`. Runs in a worker thread.

    Unlike `Predictor.preprocess`, a JPEG decodes at reduced scale (`draft`), down to twice the
    training size: a 5000x5000 JPEG then took 0.02 s and 8 MB instead of 0.4 s and 430 MB.
    It is not bit-identical to how training decoded: on 25 enlarged photos (EfficientNet-Lite0,
    224 px, each resize mode) probabilities moved by about 0.01, as much as re-saving the JPEG
    at another quality, and by 0.09 at most; top-1 changed only where the top two were within
    0.004. Fine for a live service, not for `graft predict`, whose answers must reproduce
    evaluation's, so the draft is used here only.
    """
    size = predictor.info.preprocessing.image_size
    channels = predictor.info.preprocessing.channels
    try:  # the resize too: whatever a hostile file does to either step is a 4xx, never a 500
        pixels, _ = decode_bytes(
            upload.data, channels, upload.name, max_pixels=max_pixels, draft_size=2 * size
        )
        return predictor.transform(pixels)
    except TooManyPixels as error:
        raise HTTPException(413, f"{upload.name}: {error.reason}; send a smaller image") from None
    except UnreadableImage as error:
        raise HTTPException(400, f"{upload.name}: {error.reason}") from None
    except Exception as error:  # a hostile file can trip any decoder bug: still the input's fault
        logger.warning("could not decode %s", upload.name, exc_info=True)
        raise HTTPException(400, f"{upload.name}: cannot decode ({type(error).__name__})") from None


def explain_pixels(predictor: Predictor, pixels: torch.Tensor) -> bytes:
    """The Grad-CAM overlay of the predicted class for a decoded (C, S, S) upload, as PNG
    bytes at least 224 px wide."""
    from torchgraft.explain import enlarge, grad_cam, overlay, png_bytes

    with predictor.lock:  # the same one-model-call-at-a-time rule as predictions
        cam = grad_cam(predictor.model, pixels.unsqueeze(0).to(predictor.device))
    return png_bytes(enlarge(overlay(pixels, cam.heatmaps[0].cpu()), 224))


def can_explain(predictor: Predictor) -> bool:
    """Whether Grad-CAM works for this model (it needs a spatial feature map; an MLP has none),
    tried once on a blank image when the app starts."""
    from torchgraft.explain import grad_cam

    size, channels = predictor.info.preprocessing.image_size, predictor.info.preprocessing.channels
    blank = torch.zeros((1, channels, size, size), dtype=torch.uint8, device=predictor.device)
    try:
        with predictor.lock:
            grad_cam(predictor.model, blank)
    except UserError:
        return False
    return True

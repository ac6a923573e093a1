"""The HTTP app: POST /predict, POST /explain (Grad-CAM), GET /health, and GET / (a page to
drop an image on).

The model is loaded once, when the app is created. Each upload is decoded in a worker thread
by the same rules as training data (`torchgraft.data.decode`); the model itself runs one
batch at a time behind the Predictor's lock, so concurrent requests are safe. Bad input gets
a 4xx with a JSON `detail` saying what was wrong; it never costs a 500 or the server.

FastAPI is imported here and only here: `import torchgraft` does not pay for it.
"""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.concurrency import run_in_threadpool

from torchgraft.artifact import Run
from torchgraft.data import UnreadableImage
from torchgraft.errors import UserError
from torchgraft.serve.predictor import Prediction, Predictor
from torchgraft.serve.uploads import Upload, read_upload

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
DEFAULT_MAX_UPLOAD_BYTES = 10 * 2**20  # 10 MB: a large phone photo is 3 to 8 MB


def create_app(
    run: Run | str | Path | Predictor,
    *,
    device: str = "cpu",
    class_names: str | Path | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    top_k: int = 5,
) -> FastAPI:
    """The app for a run (or an already loaded Predictor). `top_k` is the default number of
    classes each answer lists; a request may ask for another with ?top_k=N."""
    predictor = (
        run
        if isinstance(run, Predictor)
        else Predictor.from_run(run, device, class_names=class_names)
    )
    app = FastAPI(
        title=f"torchgraft: {predictor.info.model_name} ({predictor.run.path.name})",
        description="Upload an image to POST /predict; GET / is a page to try it in a browser.",
    )
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    explainable = can_explain(predictor)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {**health_info(predictor, top_k, max_upload_bytes), "explain": explainable}

    add_predict(app, predictor, top_k, max_upload_bytes)
    if explainable:
        add_explain(app, predictor, max_upload_bytes)
    return app


def add_predict(app: FastAPI, predictor: Predictor, top_k: int, max_upload_bytes: int) -> None:
    @app.post("/predict")
    async def predict(request: Request, top_k: int = Query(top_k, ge=1, le=1000)) -> dict[str, Any]:
        """Top-k classes for one image: a multipart file field, or the raw bytes as the body."""
        started = time.perf_counter()
        upload = await read_upload(request, max_upload_bytes)
        record = await run_in_threadpool(classify_upload, predictor, upload, top_k)
        return {**record.to_dict(), "milliseconds": (time.perf_counter() - started) * 1000}


def add_explain(app: FastAPI, predictor: Predictor, max_upload_bytes: int) -> None:
    @app.post("/explain", response_class=Response)
    async def explain(request: Request) -> Response:
        """Grad-CAM for one image (uploaded as for /predict): the overlay as a PNG, showing
        where the network found the evidence for its predicted class."""
        upload = await read_upload(request, max_upload_bytes)
        png = await run_in_threadpool(explain_upload, predictor, upload)
        return Response(png, media_type="image/png")


def health_info(predictor: Predictor, top_k: int, max_upload_bytes: int) -> dict[str, Any]:
    """What a load balancer or the page needs to know about the loaded model."""
    info = predictor.info
    return {
        "status": "ok",
        "model": info.model_name,
        "run": predictor.run.path.name,
        "classes": info.class_names,
        "display_names": predictor.display_names,
        "image_size": info.preprocessing.image_size,
        "device": str(predictor.device),
        "top_k": top_k,
        "max_upload_bytes": max_upload_bytes,
    }


def decode_upload(predictor: Predictor, upload: Upload) -> torch.Tensor:
    """The upload as the model's uint8 input; 400 (413 for a decompression bomb) if it won't
    decode. Runs in a worker thread."""
    try:
        return predictor.preprocess(upload.data)
    except UnreadableImage as error:
        status = 413 if error.reason.startswith("decompression bomb") else 400
        raise HTTPException(status, f"{upload.name}: {error.reason}") from None
    except Exception as error:  # a hostile file can trip any decoder bug: still the input's fault
        logger.warning("could not decode %s", upload.name, exc_info=True)
        raise HTTPException(400, f"{upload.name}: cannot decode ({type(error).__name__})") from None


def classify_upload(predictor: Predictor, upload: Upload, top_k: int) -> Prediction:
    probabilities = predictor.classify(decode_upload(predictor, upload).unsqueeze(0))[0]
    k = min(top_k, predictor.info.num_classes)
    return Prediction(upload.name, predictor.top_classes(probabilities, k))


def explain_upload(predictor: Predictor, upload: Upload) -> bytes:
    """The Grad-CAM overlay of the predicted class as PNG bytes, at least 224 px wide."""
    from torchgraft.explain import grad_cam, overlay

    pixels = decode_upload(predictor, upload)
    with predictor.lock:  # the same one-model-call-at-a-time rule as predictions
        cam = grad_cam(predictor.model, pixels.unsqueeze(0).to(predictor.device))
    image = overlay(pixels, cam.heatmaps[0].cpu())
    scale = max(1, -(-224 // max(image.size)))  # small training sizes (28, 64 px) enlarged
    image = image.resize((image.width * scale, image.height * scale), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


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

"""What every export holds: the run's classifier, uint8 images in, probabilities out.

The normalisation already lives inside `GraftedClassifier`; `ProbabilityModel` adds the
calibration temperature and the softmax, so a deployer feeds raw pixels at the training size
and reads calibrated probabilities, with nothing to re-implement.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from torchgraft.artifact import Run
from torchgraft.models import load_model
from torchgraft.models.classifier import GraftedClassifier
from torchgraft.probabilities import calibrated_probabilities

# Keys of the metadata every exported file carries (ONNX metadata_props, the AOTInductor
# package's metadata, a TorchScript extra file), so a deployer can read the input contract
# and the class names from the model file alone.
METADATA_PREFIX = "torchgraft."

Predict = Callable[[np.ndarray], np.ndarray]  # uint8 (N, C, H, W) -> (N, classes) float32


class ProbabilityModel(nn.Module):
    """uint8 (N, C, H, W) images at the training size in, (N, classes) probabilities out."""

    def __init__(self, classifier: nn.Module, temperature: float) -> None:
        super().__init__()
        self.classifier = classifier
        # A plain float, so every exporter bakes it in as a constant.
        self.temperature = float(temperature)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return calibrated_probabilities(self.classifier(images), self.temperature, dim=1)


class ProbabilityAndEmbeddingModel(nn.Module):
    """The probabilities and, from the same pass, the (N, D) embedding that scores how
    unfamiliar an image is (evaluate.familiar): a Predictor on an export with it keeps the
    unfamiliar scores eager PyTorch gives."""

    def __init__(self, model: ProbabilityModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        classifier: GraftedClassifier = self.model.classifier  # type: ignore[assignment]
        embedding, logits = classifier.embedding_and_logits(images)
        probabilities = calibrated_probabilities(logits, self.model.temperature, dim=1)
        return probabilities, embedding.float()


def with_embedding(model: ProbabilityModel, example: torch.Tensor) -> ProbabilityAndEmbeddingModel:
    """`model` with the embedding output, run once eagerly so that the classifier settles
    whether its logits come from the embedding's pass (a data-dependent check that an
    exporter cannot trace)."""
    combined = ProbabilityAndEmbeddingModel(model).eval()
    with torch.no_grad():
        combined(example)
    return combined


@dataclass
class ExportInputs:
    """Everything an exporter needs, built once per export from the run directory."""

    model: ProbabilityModel  # in eval mode
    example: torch.Tensor  # a uint8 batch of the input shape, for tracing
    metadata: dict[str, str]  # written into every exported file
    calibration_images: Callable[[], np.ndarray]  # training images, decoded only if asked for
    model_card: Callable[[], str] = lambda: ""  # README.md of the timm folder, from the run


def probability_model(run: Run) -> ProbabilityModel:
    return ProbabilityModel(load_model(run), run.info.temperature).eval()


def example_batch(run: Run) -> torch.Tensor:
    """Two random images of the input shape.

    Two, not one: torch.export specialises a dimension of size 1 into a constant, which would
    fix the batch size of the exported model.
    """
    prep = run.info.preprocessing
    generator = torch.Generator().manual_seed(0)
    shape = (2, prep.channels, prep.image_size, prep.image_size)
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)


def dynamic_batch() -> tuple[dict[int, Any], ...]:
    """`dynamic_shapes` for torch.export and torch.onnx.export: any batch size, fixed image."""
    return ({0: torch.export.Dim("batch", min=1)},)


def export_metadata(run: Run) -> dict[str, str]:
    """The input contract and class names, as strings (lists joined by newlines)."""
    info, prep = run.info, run.info.preprocessing
    fields = {
        "model_name": info.model_name,
        "input": "uint8 (N, C, H, W), RGB (or 1 grey channel), values 0..255",
        "image_size": str(prep.image_size),
        "channels": str(prep.channels),
        "resize_mode": prep.resize_mode,
        "interpolation": prep.interpolation,
        "mean": json.dumps(list(prep.mean)),  # the normalisation inside (0..1 scale)
        "std": json.dumps(list(prep.std)),
        "output": "float32 (N, classes) probabilities, softmax(logits / temperature)",
        "temperature": repr(info.temperature),
        "class_names": "\n".join(info.class_names),
        "display_names": "\n".join(info.display_names),
    }
    return {METADATA_PREFIX + key: value for key, value in fields.items()}


def predict_in_batches(predict: Predict, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Probabilities for (N, C, H, W) uint8 images, `batch_size` at a time."""
    chunks = [
        predict(images[start : start + batch_size]) for start in range(0, len(images), batch_size)
    ]
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)


def numpy_predict(
    forward: Callable[[torch.Tensor], torch.Tensor], device: torch.device | None = None
) -> Predict:
    """A PyTorch model (eager, AOTInductor or TorchScript) as NumPy in, NumPy out; the
    images go to `device` (the model's) and the probabilities come back."""

    def predict(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            batch = torch.from_numpy(np.ascontiguousarray(images))
            output = forward(batch if device is None else batch.to(device))
        return output.cpu().numpy()

    return predict


@contextlib.contextmanager
def quieter_loggers(*names: str, level: int = logging.WARNING) -> Iterator[None]:
    """Raise these libraries' log levels for a moment: their INFO lines are pass-by-pass
    detail (and torch's "No CUDA runtime" notice is irrelevant to a CPU export)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, previous in zip(loggers, levels, strict=True):
            logger.setLevel(previous)

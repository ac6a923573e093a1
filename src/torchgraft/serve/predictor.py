"""Prediction from a run directory: load once, predict on paths, PIL images, arrays, tensors.

Everything a prediction needs (architecture, classes, preprocessing, temperature) comes from
graft.json, so a run predicts the same in any process, without the training code.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from torchgraft.artifact import Run
from torchgraft.data import array_to_tensor, eval_transform, load_image, pil_to_tensor
from torchgraft.data.decode import match_channels
from torchgraft.errors import UserError
from torchgraft.models import load_model

ImageInput = str | Path | Image.Image | np.ndarray | torch.Tensor


@dataclass
class ClassScore:
    class_name: str  # the class (folder) name
    display_name: str  # the human-readable name
    probability: float


@dataclass
class Prediction:
    source: str  # the file path, or a description such as "array 3"
    top_k: list[ClassScore]  # best first

    @property
    def class_name(self) -> str:
        return self.top_k[0].class_name

    @property
    def display_name(self) -> str:
        return self.top_k[0].display_name

    @property
    def probability(self) -> float:
        return self.top_k[0].probability


class Predictor:
    """A trained run, loaded once, ready to classify batches of images."""

    def __init__(self, run: Run, device: str | torch.device = "cpu", batch_size: int = 64) -> None:
        self.run = run
        self.info = run.info
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.model = load_model(run).to(self.device).eval()
        self.transform = eval_transform(self.info.preprocessing)
        self.display_names = list(self.info.display_names)

    @classmethod
    def from_run(cls, run: Run | str | Path, device: str | torch.device = "cpu") -> Predictor:
        return cls(run if isinstance(run, Run) else Run.load(run), device)

    def preprocess(self, image: ImageInput) -> torch.Tensor:
        """One image as the model's (C, H, W) uint8 input at the training size."""
        channels = self.info.preprocessing.channels
        return self.transform(to_uint8_tensor(image, channels))

    @torch.no_grad()
    def predict_proba(self, images: Sequence[ImageInput]) -> np.ndarray:
        """Calibrated class probabilities, shape (N, num_classes), in input order."""
        batches = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            batch = torch.stack([self.preprocess(image) for image in chunk]).to(self.device)
            logits = self.model(batch).float() / self.info.temperature
            batches.append(logits.softmax(dim=1).cpu())
        if not batches:
            return np.zeros((0, self.info.num_classes), dtype=np.float32)
        return torch.cat(batches).numpy()

    def predict(
        self, images: ImageInput | Iterable[ImageInput], top_k: int = 3
    ) -> list[Prediction]:
        """One `Prediction` per image, each with its `top_k` classes, best first."""
        items = as_image_list(images)
        probabilities = self.predict_proba(items)
        k = min(top_k, self.info.num_classes)
        return [
            Prediction(describe(item, index), self.top_classes(row, k))
            for index, (item, row) in enumerate(zip(items, probabilities, strict=True))
        ]

    def top_classes(self, probabilities: np.ndarray, k: int) -> list[ClassScore]:
        order = np.argsort(-probabilities, kind="stable")[:k]
        return [
            ClassScore(self.info.class_names[i], self.display_names[i], float(probabilities[i]))
            for i in order
        ]


def as_image_list(images: ImageInput | Iterable[ImageInput]) -> list[ImageInput]:
    """A flat list of single images; a 4-D array or tensor counts as a batch of images."""
    if isinstance(images, (str, Path, Image.Image)):
        return [images]
    if isinstance(images, (np.ndarray, torch.Tensor)):
        return list(images) if images.ndim == 4 else [images]
    flat: list[ImageInput] = []
    for image in images:
        flat.extend(as_image_list(image))
    return flat


def to_uint8_tensor(image: ImageInput, channels: int) -> torch.Tensor:
    """Any supported image as a (channels, H, W) uint8 tensor."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise UserError(f"image not found: {path}")
        try:
            return load_image(path, channels)
        except OSError as error:
            raise UserError(f"cannot read {path} as an image: {error}") from None
    if isinstance(image, Image.Image):
        return pil_to_tensor(image, channels)
    if isinstance(image, np.ndarray):
        return array_to_tensor(image, channels)
    if isinstance(image, torch.Tensor):
        return tensor_to_uint8(image, channels)
    raise UserError(
        f"cannot predict on a {type(image).__name__}: pass a path, PIL image, array or tensor"
    )


def tensor_to_uint8(image: torch.Tensor, channels: int) -> torch.Tensor:
    """A (C, H, W) or (H, W) tensor, uint8 or float in [0, 1], as uint8 (C, H, W)."""
    image = image.detach().cpu()
    if image.ndim == 2:
        image = image.unsqueeze(0)
    if image.ndim != 3 or image.shape[0] not in (1, 3, 4):
        raise UserError(
            f"expected a (C, H, W) image tensor with 1, 3 or 4 channels, got {tuple(image.shape)}"
        )
    if image.dtype != torch.uint8:
        image = (image.float().clamp(0, 1) * 255).round().to(torch.uint8)
    return match_channels(image, channels)


def describe(image: ImageInput, index: int) -> str:
    if isinstance(image, (str, Path)):
        return str(image)
    return f"{type(image).__name__} {index}"

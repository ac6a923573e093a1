"""Prediction from a run directory: load once, predict on files, folders, globs, bytes, PIL
images, arrays and tensors.

Everything a prediction needs (architecture, classes, preprocessing, temperature) comes from
graft.json, so a run predicts the same in any process, without the training code. This is the
one place that maps images to calibrated probabilities: the CLI, the API, the HTTP app and
the benchmarks all go through `Predictor.score` (or `classify`, its probabilities alone).

Each prediction also says how unfamiliar its image is (evaluate.familiar): the distance of
its embedding to the run's sample of training images, flagged above the threshold the
evaluation calibrated on the validation images, so that a cat photo given to a digit
classifier is flagged instead of passing for a confident digit. The score is None where it
cannot be computed: with an export engine that gives probabilities only (all but the float
ONNX export, whose second output is the embedding) and for a run without a usable
familiar.safetensors (evaluated before it existed, or damaged: a warning).

What computes the probabilities is the `engine`. By default ("auto") it is the run's float
ONNX export on a CPU, when parity.json vouches for it with the run's current weights and
temperature (2x the throughput of eager PyTorch on small batches here), and eager PyTorch
otherwise: on a GPU, without an export, or with an export made before the ONNX file carried
the embedding (eager then keeps the unfamiliar scores). Code formats (aoti, torchscript)
are used only when named. The eager model stays loaded in any case, for Grad-CAM.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from torchgraft.artifact import Run
from torchgraft.data import UnreadableImage, eval_transform, load_display_names
from torchgraft.devices import resolve_device, usable_cpus
from torchgraft.errors import UserError, did_you_mean
from torchgraft.evaluate.familiar import Familiarity, load_familiarity
from torchgraft.models import load_model
from torchgraft.probabilities import calibrated_probabilities
from torchgraft.serve.inputs import ImageInput, as_image_list, describe, to_uint8_tensor

if TYPE_CHECKING:
    from torchgraft.export import ExportedModel

logger = logging.getLogger(__name__)

__all__ = ["ClassScore", "ImageInput", "Prediction", "Predictor", "Scores", "load_model"]


@dataclass
class ClassScore:
    class_name: str  # the class (folder) name
    display_name: str  # the human-readable name
    probability: float


@dataclass
class Prediction:
    """One image's result: its top-k classes, or why it could not be classified."""

    source: str  # the file path, or a description such as "ndarray 3"
    top_k: list[ClassScore]  # best first; empty when `error` is set
    error: str = ""  # why the image was skipped (unreadable file), else ""
    # How unlike the training images it is (evaluate.familiar), and the run's threshold for
    # calling it unfamiliar; None where there is no score (export engine, older run).
    unfamiliar: float | None = None
    unfamiliar_threshold: float | None = None

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def class_name(self) -> str:
        return self.top_k[0].class_name if self.top_k else ""

    @property
    def display_name(self) -> str:
        return self.top_k[0].display_name if self.top_k else ""

    @property
    def probability(self) -> float:
        return self.top_k[0].probability if self.top_k else 0.0

    @property
    def is_unfamiliar(self) -> bool | None:
        """Whether the image is unlike the training images (its classes may mean nothing);
        None when there is no score."""
        if self.unfamiliar is None or self.unfamiliar_threshold is None:
            return None
        return self.unfamiliar > self.unfamiliar_threshold

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON: the best class up front, then the whole top-k."""
        return {
            "source": self.source,
            "class_name": self.class_name,
            "display_name": self.display_name,
            "probability": self.probability,
            "top_k": [asdict(score) for score in self.top_k],
            "unfamiliar": self.unfamiliar,
            "unfamiliar_threshold": self.unfamiliar_threshold,
            "is_unfamiliar": self.is_unfamiliar,
            "error": self.error,
        }


@dataclass
class Scores:
    """What the model says about a batch of images."""

    probabilities: np.ndarray  # (N, num_classes), calibrated
    unfamiliar: np.ndarray | None  # (N,) evaluate.familiar scores; None: not computed


class Predictor:
    """A trained run, loaded once, ready to classify batches of images.

    Safe to share between threads: the model runs one batch at a time (a lock), while
    decoding, the slow part for real photos, runs in each caller's thread.
    """

    def __init__(
        self,
        run: Run,
        device: str | torch.device = "auto",
        batch_size: int = 64,
        channels_last: bool | None = None,
        engine: str = "auto",
    ) -> None:
        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}")
        self.run = run
        self.info = run.info
        self.device = resolve_device(device)  # before loading: "gpu" or no CUDA is a UserError
        self.batch_size = batch_size
        # Channels-last convolutions made batched CPU prediction 1.7x faster here (EfficientNet,
        # benchmarks/batch_predict.py); on GPUs leave the choice to the caller.
        self.channels_last = self.device.type == "cpu" if channels_last is None else channels_last
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.model = load_model(run).to(self.device).to(memory_format=memory_format).eval()
        self.transform = eval_transform(self.info.preprocessing)
        self.display_names = list(self.info.display_names)
        self.lock = threading.Lock()  # held while the model runs; hold it to use it directly
        familiarity = load_familiarity(run)
        # The eager model stays loaded for Grad-CAM; an export, if chosen, classifies.
        self.engine, self.exported = choose_engine(run, engine, self.device, familiarity)
        if self.exported is not None and not self.exported.has_embedding:
            familiarity = None  # unfamiliar scores need embeddings: this export has none
        self.familiarity: Familiarity | None = (
            None if familiarity is None else familiarity.to(self.device)
        )

    @classmethod
    def from_run(
        cls,
        run: Run | str | Path,
        device: str | torch.device = "auto",
        batch_size: int = 64,
        class_names: str | Path | None = None,
        engine: str = "auto",
    ) -> Predictor:
        """Load a run; `class_names`, a JSON file (cat_to_name.json), overrides display names;
        `engine` is auto, eager PyTorch or an export format (`choose_engine`)."""
        loaded = cls(
            run if isinstance(run, Run) else Run.load(run), device, batch_size, engine=engine
        )
        if class_names is not None:
            loaded.display_names = load_display_names(class_names, loaded.info.class_names)
        return loaded

    def preprocess(self, image: ImageInput) -> torch.Tensor:
        """One image as the model's (C, H, W) uint8 input at the training size.

        Files and bytes that do not decode raise `UnreadableImage`."""
        channels = self.info.preprocessing.channels
        return self.transform(to_uint8_tensor(image, channels))

    def score(self, pixels: torch.Tensor, unfamiliar: bool = True) -> Scores:
        """Calibrated class probabilities for a (N, C, S, S) uint8 batch and, from the same
        pass, how unfamiliar each image is. Without `unfamiliar`, with an export engine or
        without the run's familiar.safetensors: the probabilities alone."""
        familiarity = self.familiarity if unfamiliar else None
        if self.exported is not None:  # the export computes calibrated probabilities itself
            return self._exported_scores(self.exported, pixels.cpu().numpy(), familiarity)
        batch = pixels.to(self.device)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with self.lock, torch.inference_mode():
            distances = None
            if familiarity is None:
                logits = self.model(batch)
            else:
                embeddings, logits = self.model.embedding_and_logits(batch)
                distances = familiarity.scores(embeddings).cpu().numpy()
            probabilities = calibrated_probabilities(logits, self.info.temperature, dim=1)
            return Scores(probabilities.cpu().numpy(), distances)

    def _exported_scores(
        self, exported: ExportedModel, pixels: np.ndarray, familiarity: Familiarity | None
    ) -> Scores:
        with self.lock:
            if familiarity is None:
                return Scores(exported(pixels), None)
            probabilities, embeddings = exported.with_embedding(pixels)
        distances = familiarity.scores(torch.from_numpy(embeddings)).numpy()
        return Scores(probabilities, distances)

    def classify(self, pixels: torch.Tensor) -> np.ndarray:
        """Calibrated class probabilities, (N, num_classes), for a (N, C, S, S) uint8 batch."""
        return self.score(pixels, unfamiliar=False).probabilities

    def predict_proba(self, images: ImageInput | Iterable[ImageInput]) -> np.ndarray:
        """Calibrated class probabilities, shape (N, num_classes), in input order.

        Strict: a file that does not decode is a `UserError` (`predict` skips it instead)."""
        items = as_image_list(images)
        return self._scores(items, skip_unreadable=False, unfamiliar=False)[0].probabilities

    def predict(
        self, images: ImageInput | Iterable[ImageInput], top_k: int = 3
    ) -> list[Prediction]:
        """One `Prediction` per image, each with its `top_k` classes, best first.

        Files that do not decode are skipped with a warning: their record says why."""
        return self.predict_with_probabilities(images, top_k)[0]

    def predict_with_probabilities(
        self, images: ImageInput | Iterable[ImageInput], top_k: int = 3
    ) -> tuple[list[Prediction], np.ndarray]:
        """The records of `predict` and the (N, num_classes) probabilities, row for row
        (a skipped image's row is NaN)."""
        check_top_k(top_k)
        items = as_image_list(images)
        scores, errors = self._scores(items, skip_unreadable=True, unfamiliar=True)
        k = min(top_k, self.info.num_classes)
        records = [
            Prediction(describe(item, index), [], errors[index])
            if index in errors
            else self.prediction(describe(item, index), scores, index, k)
            for index, item in enumerate(items)
        ]
        return records, scores.probabilities

    def prediction(self, source: str, scores: Scores, row: int, k: int) -> Prediction:
        """The record of row `row` of `scores`: its top `k` classes and unfamiliar score."""
        unfamiliar = threshold = None
        if scores.unfamiliar is not None and self.familiarity is not None:
            unfamiliar = float(scores.unfamiliar[row])
            threshold = self.familiarity.threshold
        top = self.top_classes(scores.probabilities[row], k)
        return Prediction(source, top, unfamiliar=unfamiliar, unfamiliar_threshold=threshold)

    def top_classes(self, probabilities: np.ndarray, k: int) -> list[ClassScore]:
        check_top_k(k)
        order = np.argsort(-probabilities, kind="stable")[:k]
        return [
            ClassScore(self.info.class_names[i], self.display_names[i], float(probabilities[i]))
            for i in order
        ]

    def _scores(
        self, items: Sequence[ImageInput], skip_unreadable: bool, unfamiliar: bool
    ) -> tuple[Scores, dict[int, str]]:
        """Scores for every item, batch by batch (NaN for the skipped), and {index: reason}
        for the skipped."""
        result = np.full((len(items), self.info.num_classes), np.nan, dtype=np.float32)
        distances = None
        if unfamiliar and self.familiarity is not None:
            distances = np.full(len(items), np.nan, dtype=np.float32)
        errors: dict[int, str] = {}
        for batch in self._decoded_batches(items):
            pixels: list[torch.Tensor] = []
            kept: list[int] = []
            for index, decoded in batch:
                if isinstance(decoded, torch.Tensor):
                    pixels.append(decoded)
                    kept.append(index)
                    continue
                source = describe(items[index], index)
                if not skip_unreadable:
                    raise UserError(f"cannot read {source} as an image: {decoded.reason}")
                logger.warning("skipped %s: %s", source, decoded.reason)
                errors[index] = decoded.reason
            if kept:
                scores = self.score(torch.stack(pixels), unfamiliar=distances is not None)
                result[kept] = scores.probabilities
                if distances is not None and scores.unfamiliar is not None:
                    distances[kept] = scores.unfamiliar
        return Scores(result, distances), errors

    def _decoded_batches(
        self, items: Sequence[ImageInput]
    ) -> Iterator[list[tuple[int, torch.Tensor | UnreadableImage]]]:
        """Batches of (index, pixels or why not), decoded by a pool of threads: the next
        batch decodes while the model classifies this one, so a folder of JPEGs is not held
        up by decoding. At most two batches of pixels are in memory at once."""
        starts = range(0, len(items), self.batch_size)
        with ThreadPoolExecutor(usable_cpus(), thread_name_prefix="decode") as pool:
            ahead: deque[list[tuple[int, Future[torch.Tensor | UnreadableImage]]]] = deque()
            for start in starts:
                indices = range(start, min(start + self.batch_size, len(items)))
                ahead.append([(i, pool.submit(self._decode_or_reason, items[i])) for i in indices])
                if len(ahead) == 2:
                    yield [(index, job.result()) for index, job in ahead.popleft()]
            while ahead:
                yield [(index, job.result()) for index, job in ahead.popleft()]

    def _decode_or_reason(self, item: ImageInput) -> torch.Tensor | UnreadableImage:
        try:
            return self.preprocess(item)
        except UnreadableImage as error:
            return error


def choose_engine(
    run: Run, engine: str, device: torch.device, familiarity: Familiarity | None
) -> tuple[str, ExportedModel | None]:
    """The engine's name and its export (None: eager PyTorch). "auto" picks the float ONNX
    export on a CPU when parity.json vouches for it and it gives everything eager does (the
    embedding, where the run has unfamiliar scores); any other name is `load_engine`'s."""
    if engine != "auto":
        return engine, load_engine(run, engine)
    if device.type != "cpu" or not onnx_is_current(run):
        return "eager", None
    exported = load_engine(run, "onnx")
    assert exported is not None
    if familiarity is not None and not exported.has_embedding:
        logger.info(
            "%s has no embedding output (exported before it had one): predicting with eager "
            "PyTorch to keep the unfamiliar scores; export it again for the faster path: "
            "graft export --run %s --format onnx", exported.path, run.path,
        )  # fmt: skip
        return "eager", None
    logger.info("predicting with %s (parity-checked ONNX export)", exported.path)
    return "onnx", exported


def onnx_is_current(run: Run) -> bool:
    """Whether the run has a float ONNX export of its current weights and onnxruntime can
    run it here (a lean install has no onnxruntime)."""
    from torchgraft.export.exporter import checked_formats

    return "onnx" in checked_formats(run) and importlib.util.find_spec("onnxruntime") is not None


def load_engine(run: Run, engine: str) -> ExportedModel | None:
    """The run's export that `engine` names (None for eager PyTorch), on the CPU.

    Asking for a code format (aoti, torchscript) by name is what lets it load: predict and
    serve never pick one by themselves. It must be current (parity.json reports it for the
    run's weights and temperature); one not signed on this machine loads with a warning.
    """
    from torchgraft.export import EXPORTS_DIR, FORMATS, load_exported
    from torchgraft.export.exporter import checked_formats
    from torchgraft.export.signatures import signed_here

    if engine == "eager":
        return None
    if engine not in FORMATS:
        raise UserError(
            f"unknown engine {engine!r}: use auto (the default), eager (the run's weights) or "
            f"an export format: {', '.join(FORMATS)}."
            + did_you_mean(engine, ["auto", "eager", *FORMATS])
        )
    spec = FORMATS[engine]
    path = run.path / EXPORTS_DIR / spec.file_name
    if engine not in checked_formats(run):
        raise UserError(
            f"no current {engine} export in {path.parent} for this run's weights: "
            f"graft export --run {run.path} --format {engine}"
        )
    if spec.code and not signed_here(path):
        logger.warning("loading %s, code not signed on this machine, as --engine asked", path)
    return load_exported(path, allow_code=True)


def check_top_k(top_k: int) -> None:
    """Refuse a top_k that would list nothing (0) or slice from the end (negative)."""
    if top_k < 1:
        raise UserError(f"top_k must be at least 1 (how many classes to list), got {top_k}")

"""Load an exported model as a function: uint8 (N, C, H, W) NumPy images -> probabilities.

One interface over the formats, for parity checks, benchmarks and batch prediction:

    model = load_exported("runs/NAME/exports/model.onnx")
    probabilities = model(images)  # (N, classes) float32
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from torchgraft.errors import UserError
from torchgraft.export.formats import format_of_file
from torchgraft.export.model import METADATA_PREFIX, Predict, numpy_predict, quieter_loggers
from torchgraft.export.onnx_format import EMBEDDING_NAME, INPUT_NAME, OUTPUT_NAME
from torchgraft.export.signatures import SIGNATURES_FILE, secret_path, signed_here
from torchgraft.export.timm_folder import load_timm_folder
from torchgraft.export.torchscript import METADATA_FILE, without_jit_deprecation

# uint8 (N, C, H, W) -> (N, classes) probabilities and (N, D) embeddings, from one pass
PredictWithEmbedding = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class Engine:
    """What a format's loader gives: its call and its metadata."""

    predict: Predict  # the format's own call, on a contiguous uint8 batch
    metadata: dict[str, str]  # the torchgraft.* keys written at export
    # The ONNX export's second output (onnx_format.EMBEDDING_NAME); None for the others.
    predict_with_embedding: PredictWithEmbedding | None = None


@dataclass
class ExportedModel:
    """A loaded export. Call it with uint8 (N, C, H, W) images at the training size."""

    path: Path
    engine: Engine

    @property
    def metadata(self) -> dict[str, str]:
        return self.engine.metadata

    @property
    def has_embedding(self) -> bool:
        """Whether it also gives the embedding unfamiliar scores are made from."""
        return self.engine.predict_with_embedding is not None

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = self._checked(images)
        if len(images) == 0:
            return np.zeros((0, len(self.class_names)), dtype=np.float32)
        return np.asarray(self.engine.predict(images), dtype=np.float32)

    def with_embedding(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, classes) probabilities and (N, D) embeddings; only where `has_embedding`."""
        if self.engine.predict_with_embedding is None:
            raise UserError(f"{self.path.name} has no embedding output: export it again")
        probabilities, embeddings = self.engine.predict_with_embedding(self._checked(images))
        return np.asarray(probabilities, dtype=np.float32), np.asarray(embeddings, np.float32)

    def _checked(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        expected = (self.channels, self.image_size, self.image_size)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != expected:
            raise UserError(
                f"{self.path.name} takes uint8 images of shape (N, {', '.join(map(str, expected))})"
                f", got {images.dtype} {images.shape}: resize to the training size first "
                "(exports/README.md shows how)"
            )
        return np.ascontiguousarray(images)

    def _field(self, name: str) -> str:
        return self.metadata[METADATA_PREFIX + name]

    @property
    def image_size(self) -> int:
        return int(self._field("image_size"))

    @property
    def channels(self) -> int:
        return int(self._field("channels"))

    @property
    def class_names(self) -> list[str]:
        return self._field("class_names").split("\n")

    @property
    def display_names(self) -> list[str]:
        return self._field("display_names").split("\n")


def load_exported(
    path: str | Path, threads: int | None = None, *, allow_code: bool = False
) -> ExportedModel:
    """A .onnx (float or int8), .pt2 or .ts file written by `graft export`.

    Security: .pt2 and .ts files are code. Loading a .pt2 loads and runs the native shared
    library inside it, and a .ts file is a pickle-based TorchScript archive whose code runs
    when called; either can do anything this process can. So they load only when
    `graft export` signed them on this machine, for this user (`signatures`), or when
    `allow_code` says the caller trusts them. A .onnx file is data (a graph onnxruntime
    interprets), as are the run's safetensors weights.

    `threads` caps onnxruntime's intra-op threads (default: torch's thread count, so the
    formats compare fairly); the PyTorch formats use torch's own setting.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"no exported model at {path}: run `graft export --run runs/NAME` first")
    loaders = {".onnx": _load_onnx, ".pt2": _load_aoti, ".ts": _load_torchscript}
    if path.is_dir():  # the timm folder: safetensors and JSON, data like ONNX
        load = _load_timm
    elif path.suffix in loaders:
        load = loaders[path.suffix]
        if path.suffix != ".onnx" and not allow_code:
            check_signed(path)
    else:
        raise UserError(
            f"cannot load {path}: expected a .onnx, .pt2 or .ts file or the timm folder "
            "from graft export"
        )
    try:
        engine = load(path, threads or torch.get_num_threads())
    except ImportError as error:  # the engine is missing here: the file may be fine
        module = error.name or "the engine"
        raise UserError(
            f"cannot load {path}: {module} is not installed (pip install {module})"
        ) from None
    except Exception as error:  # a damaged or foreign file: the engines raise many types
        first_line = next(iter(str(error).splitlines()), "")  # torch's go on for a page
        raise UserError(
            f"cannot load {path} ({type(error).__name__}: {first_line}): export it again "
            "with graft export"
        ) from None
    if METADATA_PREFIX + "image_size" not in engine.metadata:
        raise UserError(f"{path} was not written by graft export: it has no torchgraft metadata")
    return ExportedModel(path, engine)


def check_signed(path: Path) -> None:
    """Refuse a code file (.pt2, .ts) that this user's `graft export` did not write."""
    if signed_here(path):
        return
    spec = format_of_file(path.name)
    engine = spec.name if spec else "aoti or torchscript"
    raise UserError(
        f"not loading {path}: it is code (loading it runs it) and no signature made on this "
        f"machine vouches for it ({path.parent / SIGNATURES_FILE}, keyed by {secret_path()}); "
        "parity.json is only a report. If you trust whoever made it, ask for it by name "
        f"(--engine {engine}, or load_exported(path, allow_code=True)); or export it again "
        f"here: graft export --run RUN --format {engine}"
    )


def _load_timm(path: Path, threads: int) -> Engine:
    return Engine(*load_timm_folder(path))  # timm runs on torch's own thread setting


def _load_onnx(path: Path, threads: int) -> Engine:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    # Idle onnxruntime threads spin by default, taking the cores from the decoding threads
    # and the server's event loop: off, batch prediction here went from 485 to 620
    # images/s and the server from 214 to 265 requests/s (p99 58 to 41 ms).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    metadata = dict(session.get_modelmeta().custom_metadata_map)

    def predict(images: np.ndarray) -> np.ndarray:
        return np.asarray(session.run([OUTPUT_NAME], {INPUT_NAME: images})[0])

    def predict_with_embedding(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probabilities, embeddings = session.run([OUTPUT_NAME, EMBEDDING_NAME], {INPUT_NAME: images})
        return np.asarray(probabilities), np.asarray(embeddings)

    # Exports before the embedding output, and the int8 file, have probabilities only.
    outputs = {output.name for output in session.get_outputs()}
    return Engine(predict, metadata, predict_with_embedding if EMBEDDING_NAME in outputs else None)


def _load_aoti(path: Path, threads: int) -> Engine:
    with quieter_loggers("torch.utils.cpp_extension", level=logging.ERROR):  # a CUDA notice
        package = torch._inductor.aoti_load_package(str(path))
    return Engine(numpy_predict(package), dict(package.get_metadata()))


def _load_torchscript(path: Path, threads: int) -> Engine:
    extra_files = {METADATA_FILE: ""}
    with without_jit_deprecation():
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra_files)
    return Engine(numpy_predict(module), json.loads(extra_files[METADATA_FILE] or "{}"))

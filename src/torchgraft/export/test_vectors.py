"""exports/test_vectors/: a few model inputs with the probabilities eager PyTorch gives them,
so that a port of the model to another language or runtime can check itself.

Each vector is a PNG holding exactly one input image of the exports (S x S, uint8, grey or
RGB as the model takes it; PNG is lossless, so decoding it gives the very pixels) and an
entry of vectors.json: the file, the class it shows, the top-1 class and the probabilities
eager PyTorch computes for it, and the largest difference a float runtime may have
(parity's tolerance). Validation images, one per class first, so every class appears.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from torchgraft.artifact import atomic_folder
from torchgraft.export.model import Predict

TEST_VECTORS_DIR = "test_vectors"
VECTORS_FILE = "vectors.json"
COUNT = 8  # vectors written, at most


@dataclass
class VectorCheck:
    """How a runtime's answers compare with the test vectors."""

    vectors: int
    top1_disagreements: int
    max_abs_diff: float
    tolerance: float  # what a float runtime must stay within

    @property
    def passed(self) -> bool:
        return self.top1_disagreements == 0 and self.max_abs_diff <= self.tolerance


def write_test_vectors(
    folder: Path, pixels: np.ndarray, labels: np.ndarray, probabilities: np.ndarray,
    class_names: list[str], tolerance: float,
) -> Path:  # fmt: skip
    """Write folder/test_vectors/ (replacing an earlier one whole) from parity images
    `pixels` (N, C, S, S), their `labels` and eager `probabilities`."""
    chosen = pick(labels, COUNT)
    entries = []
    path = folder / TEST_VECTORS_DIR
    with atomic_folder(path) as writing:
        for number, index in enumerate(chosen):
            name = f"{number}.png"
            image = pixels[index]
            Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)).save(
                writing / name
            )
            row = probabilities[index]
            entries.append({
                "file": name, "label": class_names[int(labels[index])],
                "top1": class_names[int(row.argmax())], "probabilities": row.tolist(),
            })  # fmt: skip
        document = {
            "input": "each PNG is one model input: uint8, (1, C, S, S) once given a batch axis",
            "tolerance": tolerance,
            "class_names": class_names,
            "vectors": entries,
        }
        (writing / VECTORS_FILE).write_text(json.dumps(document, indent=1) + "\n")
    return path


def pick(labels: np.ndarray, count: int) -> list[int]:
    """Up to `count` indices: the first image of each class, then the next ones in order."""
    firsts = [int(np.flatnonzero(labels == label)[0]) for label in np.unique(labels)]
    taken = set(firsts)
    rest = [index for index in range(len(labels)) if index not in taken]
    return sorted((firsts + rest)[:count])


def read_test_vectors(path: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """The vectors of a test_vectors folder as (N, C, S, S) uint8 inputs, (N, classes)
    expected probabilities and the tolerance, decoded with Pillow alone."""
    document = json.loads((path / VECTORS_FILE).read_text())
    images = []
    for entry in document["vectors"]:
        image = np.asarray(Image.open(path / entry["file"]))
        images.append(image[None] if image.ndim == 2 else image.transpose(2, 0, 1))
    expected = np.array([entry["probabilities"] for entry in document["vectors"]], np.float32)
    return np.stack(images), expected, float(document["tolerance"])


def check_test_vectors(predict: Predict, path: Path) -> VectorCheck:
    """Run `predict` (uint8 batch -> probabilities) on the vectors and compare."""
    inputs, expected, tolerance = read_test_vectors(path)
    answers = np.asarray(predict(inputs))
    return VectorCheck(
        len(inputs),
        int((answers.argmax(1) != expected.argmax(1)).sum()),
        float(np.abs(answers - expected).max(initial=0.0)),
        tolerance,
    )

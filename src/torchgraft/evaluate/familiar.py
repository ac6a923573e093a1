"""How unfamiliar an input is: its distance to the training images, in the run's own network.

A classifier answers with one of its classes whatever it is shown, so a cat photo given to a
digit classifier gets a confident digit. The network's embedding of an image
(`GraftedClassifier.embedding_and_logits`: channel statistics of its stages) tells the two
apart: an image like the training images lies close to some of them, a cat photo far from
all. The score of an image is the mean cosine distance to its `k` nearest neighbours among
a stratified sample of the training images (evaluate.neighbours); the threshold above which
it is called unfamiliar is a high quantile of the validation images' scores, so about
1 - quantile of images like the validation ones are flagged.

Measured on the demo model (EfficientNet-Lite0 on mnist5k, 1,000 references, k 5, the 0.99
quantile): the threshold is 0.066; each of 20 scikit-image photos scores 2.1 to 5.2 times it
(camera lowest, chelsea highest); 1.0% of the validation digits are above it. The
file is 2 MB (1,000 x 1,024 float16). Building it costs the evaluation one more pass over
1,000 images: 3.6 s became 5.1 s on 2 CPU cores (best of three, each way).

The evaluation of the validation split builds the reference set and the threshold and keeps
them in the run as familiar.safetensors (tensors only, the settings in its header), with the
digest of the weights the embeddings came from: those of other weights (a resumed run not
evaluated since) are not comparable, and the file is then ignored with a warning.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from torchgraft.artifact import WEIGHTS_FILE, Run, load_tensors_and_metadata, save_tensors
from torchgraft.data.cache_files import read_or_none
from torchgraft.data.hashing import content_digest
from torchgraft.evaluate.neighbours import knn_distance, normalized

logger = logging.getLogger(__name__)

FAMILIAR_FILE = "familiar.safetensors"
REFERENCE_IMAGES = 1000  # training images in the reference set, at most (stratified)
NEIGHBOURS = 5  # the score is the mean distance to this many nearest references
QUANTILE = 0.99  # the threshold: this quantile of the validation images' scores


@dataclass
class Familiarity:
    """A run's reference set and threshold: what scores a new image's unfamiliarity."""

    references: torch.Tensor  # (N, D) float32 unit rows: embeddings of sampled training images
    k: int  # neighbours whose mean cosine distance is the score
    threshold: float  # a score above this is unfamiliar
    quantile: float  # the quantile of the validation scores the threshold is
    weights_sha256: str  # digest of the model.safetensors the embeddings came from

    def scores(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(N,) unfamiliarity of images with these (N, D) embeddings: 0 for a copy of a
        reference, up to 2 for one pointing away from all of them."""
        references = self.references.to(embeddings.device)  # no copy once moved there (`to`)
        return knn_distance(normalized(embeddings), references, self.k)

    def to(self, device: torch.device) -> Familiarity:
        """The same, with the references on `device`."""
        return dataclasses.replace(self, references=self.references.to(device))


@dataclass
class FamiliarSummary:
    """What the evaluation states about the threshold (metrics.json, report.html)."""

    threshold: float  # a prediction's `unfamiliar` score above this flags it
    quantile: float  # the quantile of the validation scores it is
    k: int  # neighbours averaged
    references: int  # training images in the reference set
    flagged: float  # share of the validation images above the threshold
    file_bytes: int  # size of familiar.safetensors


def reference_sample(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Sorted indices of at most `size` images, the same number from each class (all of a
    class smaller than its share): rare classes are familiar too. Seeded, so an
    evaluation repeated on the same run picks the same images."""
    classes = np.unique(labels)
    per_class = -(-size // max(len(classes), 1))  # ceiling division
    generator = np.random.default_rng(seed)
    chosen = [
        generator.permutation(np.flatnonzero(labels == label))[:per_class] for label in classes
    ]
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)


def calibrate(
    references: torch.Tensor, validation: torch.Tensor, weights_sha256: str,
    k: int = NEIGHBOURS, quantile: float = QUANTILE,
) -> tuple[Familiarity, torch.Tensor]:  # fmt: skip
    """The familiarity of training-image embeddings `references` with its threshold at
    `quantile` of the `validation` embeddings' scores; also returns those scores."""
    unit = normalized(references)
    scores = knn_distance(normalized(validation), unit, k)
    threshold = float(torch.quantile(scores.double(), quantile))
    return Familiarity(unit, k, threshold, quantile, weights_sha256), scores


def weights_digest(run: Run) -> str:
    return content_digest(run.path / WEIGHTS_FILE)


def save_familiarity(run: Run, familiarity: Familiarity) -> int:
    """Write familiar.safetensors (references in float16: half the bytes, and the demo's
    scores moved by 2e-5 at most); returns its size in bytes."""
    path = run.path / FAMILIAR_FILE
    metadata = {
        "k": str(familiarity.k),
        "threshold": repr(familiarity.threshold),
        "quantile": repr(familiarity.quantile),
        "count": str(len(familiarity.references)),
        "weights_sha256": familiarity.weights_sha256,
    }
    save_tensors(path, {"references": familiarity.references.half()}, metadata)
    return path.stat().st_size


def read_familiarity(path: Path) -> Familiarity:
    """familiar.safetensors as written by `save_familiarity`; any other content raises."""
    tensors, metadata = load_tensors_and_metadata(path)
    references = tensors["references"].float()
    familiarity = Familiarity(
        references, int(metadata["k"]), float(metadata["threshold"]),
        float(metadata["quantile"]), metadata["weights_sha256"],
    )  # fmt: skip
    if references.ndim != 2 or len(references) == 0:
        raise ValueError(f"references of shape {tuple(references.shape)}, not (N, D)")
    if familiarity.k < 1 or not np.isfinite(familiarity.threshold):
        raise ValueError(f"k {familiarity.k}, threshold {familiarity.threshold}")
    return familiarity


def load_familiarity(run: Run) -> Familiarity | None:
    """The run's familiarity, or None: none for a run evaluated before it existed (no
    file), or with one warning for a damaged file or one made for other weights."""
    path = run.path / FAMILIAR_FILE
    if not path.is_file():
        return None
    remedy = f"unfamiliar scores are off; `graft evaluate --run {run.path}` rebuilds"
    familiarity = read_or_none(lambda: read_familiarity(path), "reference set", path, remedy)
    if familiarity is not None and familiarity.weights_sha256 != weights_digest(run):
        logger.warning(
            "%s was made for other weights than the run's (trained on since?): %s it",
            path, remedy,
        )  # fmt: skip
        return None
    return familiarity

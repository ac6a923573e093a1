"""`graft evaluate`: score a run on its validation split (or a test folder) and calibrate it.

On the validation split a temperature is fitted to the logits and stored in graft.json, where
prediction, export and serving apply it; the report gives the expected calibration error
before and after. Results go to metrics.json, figures/ and the self-contained report.html.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from torchgraft.artifact import Run, atomic_write_bytes
from torchgraft.config import config_from_dict
from torchgraft.data import (
    DataSplits,
    LabeledImages,
    decode_split,
    load_data,
    load_run_splits,
    make_loader,
    split_datasets,
)
from torchgraft.devices import resolve_device
from torchgraft.errors import UserError
from torchgraft.evaluate.calibration import expected_calibration_error, fit_temperature
from torchgraft.evaluate.familiar import (
    REFERENCE_IMAGES,
    FamiliarSummary,
    calibrate,
    reference_sample,
    save_familiarity,
    weights_digest,
)
from torchgraft.evaluate.figures import reliability_bins
from torchgraft.evaluate.metrics import Metrics, classification_metrics
from torchgraft.evaluate.tta import apply_view, tta_views
from torchgraft.models import GraftedClassifier, load_model
from torchgraft.precision import autocast, precision_for
from torchgraft.probabilities import calibrated_probabilities

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
TOP_LOSSES = 12


@dataclass
class TopLoss:
    index: int  # position among the evaluated images
    true_index: int  # label index of the true class
    predicted_index: int  # ... and of the predicted one
    source: str  # the file (or "validation image N" for bundled arrays)
    true_class: str
    predicted_class: str
    probability: float  # calibrated probability of the predicted class
    true_probability: float  # ... of the true class
    loss: float  # cross-entropy of this image: -log(true_probability)


@dataclass
class Evaluation:
    source: str  # "validation split" or the folder evaluated
    images: int
    metrics: Metrics
    temperature: float  # the run's temperature after this evaluation
    ece_before: float  # expected calibration error at temperature 1
    ece_after: float  # ... at the fitted (or stored) temperature
    tta_views: list[str] = field(default_factory=list)  # empty: no test-time augmentation
    plain_accuracy: float = 0.0  # accuracy of the plain view alone (equals accuracy w/o TTA)
    top_losses: list[TopLoss] = field(default_factory=list)  # the worst mistakes, worst first
    reliability: dict[str, list[dict[str, float]]] = field(default_factory=dict)  # bins
    device: str = "cpu"  # where the model ran
    precision: str = "fp32"  # ... and in which precision (precision.choose_precision)
    familiar: FamiliarSummary | None = None  # the unfamiliar-input threshold (validation only)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["metrics"] = self.metrics.to_dict()
        return data


@dataclass
class Scored:
    """Logits of every readable image under each view, with what the figures need."""

    view_logits: torch.Tensor  # (views, N, num_classes); view 0 is the plain image
    labels: torch.Tensor  # (N,)
    sources: list[str]  # per image: the file, or a description for bundled arrays
    dataset: Any  # yields (uint8 image at the training size, label), for the gallery
    model: GraftedClassifier  # the run's model, loaded once, for the gallery's Grad-CAM
    embeddings: torch.Tensor  # (N, D) of the plain view (GraftedClassifier.embedding_and_logits)
    precision: str = "fp32"  # the precision the logits were computed in


def evaluate_run(
    run: Run, data: str | None = None, quiet: bool = False, tta: bool = False,
    device: str | torch.device = "auto",
) -> Evaluation:  # fmt: skip
    """Metrics of `run` on its validation split, or on `data` (a test folder or label file).

    With `tta`, predictions are averaged over flips and crops (see evaluate.tta); the
    temperature is still fitted on the plain view, which is what prediction uses. The
    model runs on `device` (auto: the GPU when there is one) in its `auto` precision.
    """
    from torchgraft.evaluate.report import write_outputs

    chosen = resolve_device(device)  # before any decoding: a missing GPU is a UserError
    # The run's splits, loaded once: validation to score, training images for familiarity.
    splits = load_run_splits(config_from_dict(run.info.config)) if data is None else None
    images, source = evaluation_images(run, data, splits)
    views = tta_views(run.info.config.get("data", {}).get("augment", "none")) if tta else []
    scored = score_images(run, images, views or ["plain"], quiet, chosen)
    plain, labels = scored.view_logits[0], scored.labels
    temperature, familiar = run.info.temperature, None
    if splits is not None:  # calibrate only on the validation split, never on a test set
        temperature = fit_temperature(plain, labels)
        run.info.temperature = temperature
        familiar = fit_familiarity(run, splits.train, scored.embeddings, quiet, chosen)
    probabilities = calibrated_probabilities(scored.view_logits, temperature).mean(0)
    metrics = classification_metrics(probabilities, labels, run.info.display_names)
    # The plain view before and after T: the two ECE numbers and the reliability diagram.
    before = calibrated_probabilities(plain, 1.0)
    after = calibrated_probabilities(plain, temperature)
    evaluation = Evaluation(
        source, len(labels), metrics, temperature,
        expected_calibration_error(before, labels), expected_calibration_error(after, labels),
        views, accuracy(plain, labels),
        top_losses(probabilities, labels, scored.sources, run.info.display_names),
        {"before": reliability_bins(before, labels), "after": reliability_bins(after, labels)},
        str(chosen), scored.precision, familiar,
    )  # fmt: skip
    run.info.metrics = {**run.info.metrics, "evaluated_accuracy": metrics.accuracy}
    if familiar is not None:
        run.info.metrics["unfamiliar_threshold"] = familiar.threshold
    run.save_info()
    write_outputs(run, evaluation, scored, quiet)
    atomic_write_bytes(run.path / METRICS_FILE, json.dumps(evaluation.to_dict(), indent=2).encode())
    return evaluation


def fit_familiarity(
    run: Run, train: LabeledImages, validation: torch.Tensor, quiet: bool, device: torch.device
) -> FamiliarSummary:
    """Build and save the run's reference set for unfamiliar inputs (evaluate.familiar):
    the embeddings of a stratified sample of its `train` images, with the threshold
    calibrated on the validation images' `validation` embeddings."""
    started = time.perf_counter()
    seed = config_from_dict(run.info.config).train.seed
    sample = train.subset(reference_sample(train.labels, REFERENCE_IMAGES, seed))
    references = score_images(run, sample, ["plain"], quiet, device).embeddings
    familiarity, scores = calibrate(references, validation, weights_digest(run))
    size = save_familiarity(run, familiarity)
    flagged = float((scores > familiarity.threshold).float().mean())
    logger.info(
        "unfamiliar inputs: score above %.4f (the %g quantile of %d validation images; %.1f%% "
        "of them flagged), %d training images kept (%d kB), in %.1f s",
        familiarity.threshold, familiarity.quantile, len(scores), 100 * flagged,
        len(references), size // 1000, time.perf_counter() - started,
    )  # fmt: skip
    return FamiliarSummary(familiarity.threshold, familiarity.quantile, familiarity.k,
                           len(references), flagged, size)  # fmt: skip


def evaluation_images(
    run: Run, data: str | None, splits: DataSplits | None = None
) -> tuple[LabeledImages, str]:
    """The images to score, labelled with the run's class indices (the validation split
    of `splits`, the run's splits if the caller has them already, when `data` is None)."""
    if data is None:
        splits = splits or load_run_splits(config_from_dict(run.info.config))
        return splits.val, "validation split"
    splits = load_data(data, val_fraction=0.0)
    # Its test/ split if it has one, else its val/ split, else every image (no split asked).
    chosen = (
        splits.test if splits.test is not None else splits.val if len(splits.val) else splits.train
    )
    unknown = sorted(set(splits.class_names) - set(run.info.class_names))
    if unknown:
        raise UserError(f"{data} has classes the run never learned: {', '.join(unknown)}")
    remap = np.array([run.info.class_names.index(name) for name in splits.class_names])
    return LabeledImages(chosen.images, remap[chosen.labels]), data


@torch.no_grad()
def score_images(
    run: Run, images: LabeledImages, views: list[str], quiet: bool,
    device: torch.device | None = None,
) -> Scored:  # fmt: skip
    """Logits of every readable image (decoded once, as in training) under each view, and
    its embedding. `views` starts with "plain"."""
    device = device or torch.device("cpu")
    prep = run.info.preprocessing
    decoded = decode_split(images, prep, description="decoding", quiet=quiet)
    if len(decoded.kept) == 0:
        reasons = "; ".join(f"{s.path}: {s.reason}" for s in decoded.skipped[:3])
        raise UserError(
            f"no readable image to evaluate ({len(decoded.skipped)} skipped: {reasons})"
        )
    dataset, _ = split_datasets(images, decoded, prep, "none")
    model = load_model(run).to(device).eval()
    precision = precision_for("auto", device)
    logits: list[list[torch.Tensor]] = [[] for _ in views]
    embeddings, labels = [], []
    for batch, batch_labels in make_loader(dataset, 128, False, 0):
        batch = batch.to(device, non_blocking=True)
        with autocast(device, precision):
            # The plain view's pass gives the embeddings too (unfamiliar-input scores).
            plain_embeddings, plain_logits = model.embedding_and_logits(batch)
            embeddings.append(plain_embeddings.cpu())
            logits[0].append(plain_logits.float())
            for per_view, view in zip(logits[1:], views[1:], strict=True):
                per_view.append(model(apply_view(batch, view)).float())
        labels.append(torch.as_tensor(batch_labels))
    view_logits = torch.stack([torch.cat(per_view) for per_view in logits]).cpu()
    sources = [describe_source(images, int(index)) for index in decoded.kept]
    return Scored(view_logits, torch.cat(labels), sources, dataset, model.cpu(),
                  torch.cat(embeddings), precision)  # fmt: skip


def describe_source(images: LabeledImages, index: int) -> str:
    if isinstance(images.images, np.ndarray):
        return f"image {index} (bundled array)"
    return str(images.images[index])


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean())


def top_losses(
    probabilities: torch.Tensor, labels: torch.Tensor, sources: list[str], names: list[str]
) -> list[TopLoss]:
    """The images the model got most wrong: highest cross-entropy first (mistakes only)."""
    true_probability = probabilities.gather(1, labels[:, None])[:, 0]
    losses = -true_probability.clamp_min(1e-12).log()
    predicted = probabilities.argmax(1)
    worst = [int(i) for i in losses.argsort(descending=True) if predicted[i] != labels[i]]
    return [
        TopLoss(
            i,
            int(labels[i]),
            int(predicted[i]),
            sources[i],
            names[int(labels[i])],
            names[int(predicted[i])],
            float(probabilities[i, predicted[i]]),
            float(true_probability[i]),
            float(losses[i]),
        )
        for i in worst[:TOP_LOSSES]
    ]

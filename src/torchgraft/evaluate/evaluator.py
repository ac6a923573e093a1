"""`graft evaluate`: score a run on its validation split (or a test folder) and calibrate it.

On the validation split a temperature is fitted to the logits and stored in graft.json, where
prediction applies it; the report gives the expected calibration error before and after.
Results go to the run's metrics.json and figures/confusion_matrix.png.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchgraft.artifact import Run, atomic_write_bytes
from torchgraft.config import config_from_dict
from torchgraft.data import LabeledImages, decode_split, load_data, make_loader, split_datasets
from torchgraft.errors import UserError
from torchgraft.evaluate.calibration import expected_calibration_error, fit_temperature
from torchgraft.evaluate.metrics import Metrics, classification_metrics
from torchgraft.models import load_model
from torchgraft.train.setup import load_run_splits

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"


@dataclass
class Evaluation:
    source: str  # "validation split" or the folder evaluated
    images: int
    metrics: Metrics
    temperature: float  # the run's temperature after this evaluation
    ece_before: float  # expected calibration error at temperature 1
    ece_after: float  # ... at the fitted (or stored) temperature

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["metrics"] = self.metrics.to_dict()
        return data


def evaluate_run(run: Run, data: str | None = None, quiet: bool = False) -> Evaluation:
    """Metrics of `run` on its validation split, or on `data` (a test folder or label file)."""
    images, source = evaluation_images(run, data)
    logits, labels = run_logits(run, images, quiet)
    probabilities = logits.softmax(1)
    temperature = run.info.temperature
    if data is None:  # calibrate only on the validation split, never on a test set
        temperature = fit_temperature(logits, labels)
        run.info.temperature = temperature
    metrics = classification_metrics(probabilities, labels, run.info.display_names)
    evaluation = Evaluation(
        source, len(labels), metrics, temperature,
        expected_calibration_error(probabilities, labels),
        expected_calibration_error((logits / temperature).softmax(1), labels),
    )  # fmt: skip
    run.info.metrics = {**run.info.metrics, "evaluated_accuracy": metrics.accuracy}
    run.save_info()
    atomic_write_bytes(run.path / METRICS_FILE, json.dumps(evaluation.to_dict(), indent=2).encode())
    save_confusion_matrix(
        metrics, run.info.display_names, run.path / "figures" / "confusion_matrix.png"
    )
    return evaluation


def evaluation_images(run: Run, data: str | None) -> tuple[LabeledImages, str]:
    """The images to score, labelled with the run's class indices."""
    config = config_from_dict(run.info.config)
    if data is None:
        return load_run_splits(config).val, "validation split"
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
def run_logits(run: Run, images: LabeledImages, quiet: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of every readable image (decoded once, as in training) and their labels."""
    prep = run.info.preprocessing
    decoded = decode_split(images, prep, description="decoding", quiet=quiet)
    dataset, _ = split_datasets(images, decoded, prep, "none")
    model = load_model(run).eval()
    logits, labels = [], []
    for batch, batch_labels in make_loader(dataset, 128, False, 0):
        logits.append(model(batch).float())
        labels.append(torch.as_tensor(batch_labels))
    return torch.cat(logits), torch.cat(labels)


def save_confusion_matrix(metrics: Metrics, names: list[str], path: Path) -> None:
    """The confusion matrix as a PNG (counts in the cells), written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    matrix = np.array(metrics.confusion)
    size = max(4.0, 0.5 * len(names) + 2)
    figure = Figure(figsize=(size, size), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.imshow(matrix, cmap="Blues")
    axes.set(xticks=range(len(names)), yticks=range(len(names)), xlabel="predicted", ylabel="true",
             title=f"Confusion matrix (accuracy {metrics.accuracy:.1%})")  # fmt: skip
    axes.set_xticklabels(names, rotation=45, ha="right")
    axes.set_yticklabels(names)
    if len(names) <= 30:
        for (row, column), count in np.ndenumerate(matrix):
            colour = "white" if count > matrix.max() / 2 else "black"
            axes.text(column, row, str(count), ha="center", va="center", color=colour, fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())

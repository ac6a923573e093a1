"""The evaluation's figures as PNG bytes: confusion matrix, reliability diagram, top losses
with their Grad-CAM, and training curves. Matplotlib's Agg canvas only: no display needed."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchgraft.evaluate.metrics import Metrics
from torchgraft.plotting import new_figure, to_png

MAX_FIGURE_INCHES = 20.0
MAX_LABELLED_CLASSES = 50  # beyond this, tick labels overlap; the report's table has names


def confusion_matrix_png(metrics: Metrics, names: list[str]) -> bytes:
    """The confusion matrix with counts in the cells (rows true, columns predicted)."""
    matrix = np.array(metrics.confusion)
    # Capped: a 1000-class matrix at half an inch a class would be a 10 GB canvas.
    size = min(MAX_FIGURE_INCHES, max(4.0, 0.5 * len(names) + 2))
    figure = new_figure(size, size)
    axes = figure.add_subplot()
    axes.imshow(matrix, cmap="Blues")
    axes.set(xlabel="predicted", ylabel="true",
             title=f"Confusion matrix (accuracy {metrics.accuracy:.1%})")  # fmt: skip
    if len(names) <= MAX_LABELLED_CLASSES:
        axes.set(xticks=range(len(names)), yticks=range(len(names)))
        axes.set_xticklabels(names, rotation=45, ha="right")
        axes.set_yticklabels(names)
    if len(names) <= 30:
        for (row, column), count in np.ndenumerate(matrix):
            colour = "white" if count > matrix.max() / 2 else "black"
            axes.text(column, row, str(count), ha="center", va="center", color=colour, fontsize=8)
    return to_png(figure)


def reliability_bins(
    probabilities: torch.Tensor, labels: torch.Tensor, bins: int = 10
) -> list[dict[str, float]]:
    """Per confidence bin: its range, the images in it, their mean confidence and accuracy."""
    confidence, predicted = probabilities.max(1)
    correct = (predicted == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    rows = []
    for low, high in zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True):
        inside = (confidence > low) & (confidence <= high)
        count = int(inside.sum())
        rows.append({
            "low": low, "high": high, "count": count,
            "confidence": float(confidence[inside].mean()) if count else 0.0,
            "accuracy": float(correct[inside].mean()) if count else 0.0,
        })  # fmt: skip
    return rows


def reliability_png(panels: Sequence[tuple[str, list[dict[str, float]], float]]) -> bytes:
    """One reliability diagram per (title, bins, ECE): accuracy against confidence per bin.

    A perfectly calibrated model's bars touch the diagonal; bars below it mean overconfidence.
    """
    figure = new_figure(4.2 * len(panels), 4.2)
    for index, (title, bins, ece) in enumerate(panels, start=1):
        axes = figure.add_subplot(1, len(panels), index)
        centres = [(row["low"] + row["high"]) / 2 for row in bins]
        width = bins[0]["high"] - bins[0]["low"]
        accuracy = [row["accuracy"] for row in bins]
        gap = [row["confidence"] - row["accuracy"] if row["count"] else 0.0 for row in bins]
        axes.bar(centres, accuracy, width=width, edgecolor="black", label="accuracy")
        axes.bar(centres, gap, bottom=accuracy, width=width, color="salmon", alpha=0.6,
                 edgecolor="red", label="gap to confidence")  # fmt: skip
        axes.plot([0, 1], [0, 1], "k--", linewidth=1)
        axes.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy",
                 title=f"{title} (ECE {ece:.3f})")  # fmt: skip
        axes.legend(loc="upper left", fontsize=8)
    return to_png(figure)


def top_losses_png(
    tiles: Sequence[Any], captions: Sequence[str], columns: int = 4, colour_bar: str = ""
) -> bytes:
    """A grid of images (PIL, e.g. image and Grad-CAM side by side) with their captions;
    with `colour_bar`, the heatmaps' scale (jet, low to high) beside them, so labelled."""
    from matplotlib.cm import ScalarMappable

    rows = max(1, -(-len(tiles) // columns))
    figure = new_figure(4.0 * columns, 2.4 * rows)
    for index, (tile, caption) in enumerate(zip(tiles, captions, strict=True), start=1):
        axes = figure.add_subplot(rows, columns, index)
        axes.imshow(np.asarray(tile))
        axes.set_title(caption, fontsize=8)
        axes.axis("off")
    if not colour_bar:
        return to_png(figure)
    figure.tight_layout(rect=(0, 0, 0.93, 1))  # the grid first, leaving a margin for the bar
    scale = figure.colorbar(
        ScalarMappable(cmap="jet"), cax=figure.add_axes((0.94, 0.2, 0.012, 0.6))
    )
    scale.set_ticks([0, 1], labels=["low", "high"])
    scale.set_label(colour_bar)
    return to_png(figure, laid_out=True)


def training_curves_png(metrics_csv: Path) -> bytes | None:
    """Loss and accuracy per epoch, train and validation, from the run's metrics.csv."""
    if not metrics_csv.is_file():
        return None
    with metrics_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return None
    epochs = range(1, len(rows) + 1)
    figure = new_figure(9, 3.6)
    for index, name in enumerate(("loss", "accuracy"), start=1):
        axes = figure.add_subplot(1, 2, index)
        for split in ("train", "val"):
            axes.plot(epochs, [float(row[f"{split}_{name}"]) for row in rows], marker="o",
                      label=split)  # fmt: skip
        axes.set(xlabel="epoch (all phases)", ylabel=name, title=name)
        axes.legend()
    return to_png(figure)

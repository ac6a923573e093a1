"""Classification metrics a user can act on, from predicted probabilities and true labels.

torchmetrics computes them; this module names them and turns them into plain data:
accuracy and top-k accuracy, per-class precision / recall / F1 / support with macro and
weighted averages, the confusion matrix and the most-confused pairs.

A class with no image in the evaluated set keeps its row (support 0, recall and F1 0, as
scikit-learn's `zero_division=0`) and its row and column of the confusion matrix, and is
named in `absent`. The macro average, as scikit-learn's, is over the classes that occur
among the labels or the predictions: one neither present nor predicted has nothing to score.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)


@dataclass
class ClassReport:
    name: str
    precision: float
    recall: float
    f1: float
    support: int  # images of this class in the evaluated set


@dataclass
class Metrics:
    accuracy: float
    top_k_accuracy: dict[int, float]  # k -> share of images whose class is in the top k
    per_class: list[ClassReport]
    macro: dict[str, float]  # unweighted mean over classes of precision, recall, f1
    weighted: dict[str, float]  # mean weighted by support
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    most_confused: list[tuple[str, str, int]]  # (true, predicted, count), largest first
    absent: list[str] = field(default_factory=list)  # classes with no image in the set

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["top_k_accuracy"] = {str(k): v for k, v in self.top_k_accuracy.items()}
        return data


def classification_metrics(
    probabilities: torch.Tensor,
    labels: torch.Tensor,
    class_names: list[str],
    top_k: tuple[int, ...] = (1, 3, 5),
) -> Metrics:
    """All the metrics of `probabilities` (N, C) against integer `labels` (N,)."""
    classes = len(class_names)
    per_class = {
        name: function(probabilities, labels, num_classes=classes, average="none", zero_division=0)
        for name, function in (
            ("precision", multiclass_precision),
            ("recall", multiclass_recall),
            ("f1", multiclass_f1_score),
        )
    }  # fmt: skip
    support = torch.bincount(labels, minlength=classes)
    predicted = torch.bincount(probabilities.argmax(1), minlength=classes)
    scored = (support > 0) | (predicted > 0)  # scikit-learn's default labels
    confusion = multiclass_confusion_matrix(probabilities, labels, num_classes=classes)
    return Metrics(
        accuracy=float((probabilities.argmax(1) == labels).float().mean()),
        top_k_accuracy={
            k: float(
                multiclass_accuracy(
                    probabilities, labels, num_classes=classes, top_k=k, average="micro"
                )
            )
            for k in top_k
            if k <= classes
        },
        per_class=[
            ClassReport(
                name,
                float(per_class["precision"][i]),
                float(per_class["recall"][i]),
                float(per_class["f1"][i]),
                int(support[i]),
            )
            for i, name in enumerate(class_names)
        ],
        macro={m: float(values[scored].mean()) for m, values in per_class.items()},
        weighted={
            m: float((values * support).sum() / support.sum()) for m, values in per_class.items()
        },
        confusion=confusion.tolist(),
        most_confused=most_confused_pairs(confusion, class_names),
        absent=[
            name for name, count in zip(class_names, support.tolist(), strict=True) if not count
        ],
    )


def most_confused_pairs(
    confusion: torch.Tensor, class_names: list[str], limit: int = 10
) -> list[tuple[str, str, int]]:
    """Off-diagonal cells of the confusion matrix, largest first."""
    off_diagonal = confusion.clone()
    off_diagonal.fill_diagonal_(0)
    counts, flat = off_diagonal.flatten().sort(descending=True)
    pairs: list[tuple[str, str, int]] = []
    for count, index in zip(counts.tolist(), flat.tolist(), strict=True):
        if count == 0 or len(pairs) == limit:
            break
        true, predicted = divmod(index, len(class_names))
        pairs.append((class_names[true], class_names[predicted], count))
    return pairs

"""The metrics agree with scikit-learn's on the same predictions (the oracle)."""

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)

from torchgraft.evaluate import classification_metrics

NAMES = ["cat", "dog", "bird", "fish"]


@pytest.fixture
def predictions() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (300,), generator=generator)
    logits = torch.randn(300, 4, generator=generator)
    logits[torch.arange(300), labels] += 1.0  # better than chance, far from perfect
    return logits.softmax(1), labels


def test_metrics_equal_scikit_learns(predictions: tuple[torch.Tensor, torch.Tensor]) -> None:
    probabilities, labels = predictions
    metrics = classification_metrics(probabilities, labels, NAMES, top_k=(1, 2, 3))
    y_true, y_pred = labels.numpy(), probabilities.argmax(1).numpy()
    assert metrics.accuracy == pytest.approx(accuracy_score(y_true, y_pred))
    for k in (2, 3):
        expected = top_k_accuracy_score(y_true, probabilities.numpy(), k=k, labels=range(4))
        assert metrics.top_k_accuracy[k] == pytest.approx(expected)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=range(4)
    )
    for index, report in enumerate(metrics.per_class):
        assert report.name == NAMES[index]
        assert report.precision == pytest.approx(precision[index], abs=1e-6)
        assert report.recall == pytest.approx(recall[index], abs=1e-6)
        assert report.f1 == pytest.approx(f1[index], abs=1e-6)
        assert report.support == support[index]
    for average in ("macro", "weighted"):
        expected = precision_recall_fscore_support(y_true, y_pred, average=average)[:3]
        got = [getattr(metrics, average)[m] for m in ("precision", "recall", "f1")]
        np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_array_equal(metrics.confusion, confusion_matrix(y_true, y_pred))


def test_most_confused_pairs_are_the_largest_off_diagonal_cells(
    predictions: tuple[torch.Tensor, torch.Tensor],
) -> None:
    probabilities, labels = predictions
    metrics = classification_metrics(probabilities, labels, NAMES)
    matrix = np.array(metrics.confusion)
    np.fill_diagonal(matrix, 0)
    true, predicted, count = metrics.most_confused[0]
    assert count == matrix.max()
    assert matrix[NAMES.index(true), NAMES.index(predicted)] == count
    counts = [c for _, _, c in metrics.most_confused]
    assert counts == sorted(counts, reverse=True)


@pytest.mark.parametrize("predicted", [False, True], ids=["never-predicted", "predicted"])
def test_a_class_absent_from_the_set_is_scored_as_scikit_learn_scores_it(predicted: bool) -> None:
    """No "fish" among the labels: its row says support 0 and the macro average is
    scikit-learn's (over the classes among the labels or predictions), not dragged down by a
    class with nothing to score."""
    generator = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 3, (300,), generator=generator)
    logits = torch.randn(300, 4, generator=generator)
    logits[torch.arange(300), labels] += 1.0
    if not predicted:
        logits[:, 3] -= 100.0
    probabilities = logits.softmax(1)
    metrics = classification_metrics(probabilities, labels, NAMES, top_k=(1, 3))
    y_true, y_pred = labels.numpy(), probabilities.argmax(1).numpy()
    assert (3 in y_pred) == predicted
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=range(4), zero_division=0
    )
    got = np.array([[c.precision, c.recall, c.f1, c.support] for c in metrics.per_class])
    np.testing.assert_allclose(got, np.stack([precision, recall, f1, support], 1), atol=1e-6)
    for average in ("macro", "weighted"):
        expected = precision_recall_fscore_support(
            y_true, y_pred, average=average, zero_division=0
        )[:3]
        got_average = [getattr(metrics, average)[m] for m in ("precision", "recall", "f1")]
        np.testing.assert_allclose(got_average, expected, atol=1e-6)
    confusion = np.asarray(metrics.confusion)
    np.testing.assert_array_equal(confusion, confusion_matrix(y_true, y_pred, labels=range(4)))
    assert confusion[3].sum() == 0 and metrics.absent == ["fish"]
    assert all(true != "fish" for true, _, _ in metrics.most_confused)
    expected_top3 = top_k_accuracy_score(y_true, probabilities.numpy(), k=3, labels=range(4))
    assert metrics.top_k_accuracy[3] == pytest.approx(expected_top3)

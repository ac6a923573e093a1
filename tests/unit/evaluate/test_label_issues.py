import numpy as np
import torch

from torchgraft.evaluate.label_issues import (
    class_thresholds,
    find_label_issues,
    out_of_fold_probabilities,
)


def _clusters(
    per_class: int = 60, classes: int = 3, seed: int = 0
) -> tuple[torch.Tensor, np.ndarray]:
    generator = torch.Generator().manual_seed(seed)
    centres = 4 * torch.randn(classes, 16, generator=generator)
    labels = np.repeat(np.arange(classes), per_class)
    points = centres[labels] + torch.randn(len(labels), 16, generator=generator)
    return points, labels


def test_planted_flips_are_the_top_issues_with_their_true_class():
    points, truth = _clusters()
    given = truth.copy()
    flipped = np.array([3, 70, 150, 171])
    given[flipped] = (truth[flipped] + 1) % 3
    issues = find_label_issues(out_of_fold_probabilities(points, given, 3), given)
    assert {issue.row for issue in issues[:4]} == set(flipped.tolist())
    assert all(issue.suggested == truth[issue.row] for issue in issues[:4])
    assert [issue.given_probability for issue in issues] == sorted(
        issue.given_probability for issue in issues
    )


def test_clean_separable_labels_have_no_issues():
    points, labels = _clusters(seed=1)
    assert find_label_issues(out_of_fold_probabilities(points, labels, 3), labels) == []


def test_a_class_is_confident_at_its_own_mean_probability():
    probabilities = np.array([[0.9, 0.1], [0.7, 0.3], [0.2, 0.8]])
    labels = np.array([0, 0, 1])
    assert np.allclose(class_thresholds(probabilities, labels), [0.8, 0.8])
    # Row 1 gives class 1 only 0.3 (< 0.8): not counted under it, so not an issue.
    assert find_label_issues(probabilities, labels) == []

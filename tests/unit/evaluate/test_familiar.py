"""The unfamiliar-input reference set: sampled, calibrated, saved, and refused when damaged."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from torchgraft import api
from torchgraft.artifact import Run
from torchgraft.evaluate.familiar import (
    FAMILIAR_FILE,
    calibrate,
    load_familiarity,
    reference_sample,
    save_familiarity,
)
from torchgraft.evaluate.neighbours import knn_distance, normalized
from torchgraft.testing import class_image


@pytest.fixture
def run_copy(tiny_run: Path, tmp_path: Path) -> Run:
    """A private copy of the tiny run (trained, so evaluated: it has its familiar file)."""
    return Run.load(shutil.copytree(tiny_run, tmp_path / "run"))


def test_the_sample_takes_the_same_number_from_each_class_and_is_seeded() -> None:
    labels = np.array([0] * 500 + [1] * 40 + [2] * 2000)
    chosen = reference_sample(labels, 300, seed=0)
    assert np.bincount(labels[chosen]).tolist() == [100, 40, 100]  # all 40 of the rare class
    assert np.array_equal(chosen, np.unique(chosen))  # sorted, no repeats
    assert np.array_equal(chosen, reference_sample(labels, 300, seed=0))
    assert not np.array_equal(chosen, reference_sample(labels, 300, seed=1))


def test_the_threshold_is_the_stated_quantile_of_the_validation_distances() -> None:
    generator = torch.Generator().manual_seed(0)
    references, validation = torch.randn(400, 32, generator=generator), torch.randn(1000, 32)
    familiarity, scores = calibrate(references, validation, "digest", k=5, quantile=0.99)
    expected = knn_distance(normalized(validation), normalized(references), 5)
    assert torch.allclose(scores, expected)
    assert familiarity.threshold == pytest.approx(float(np.quantile(expected.numpy(), 0.99)))
    assert float((scores > familiarity.threshold).float().mean()) == pytest.approx(0.01, abs=1e-3)
    assert torch.allclose(familiarity.scores(validation), expected)


def test_the_file_keeps_its_settings_and_scores_as_before(run_copy: Run) -> None:
    saved = load_familiarity(run_copy)
    assert saved is not None
    validation = torch.randn(20, saved.references.shape[1])
    changed, _ = calibrate(saved.references, validation, saved.weights_sha256, k=3, quantile=0.9)
    size = save_familiarity(run_copy, changed)
    loaded = load_familiarity(run_copy)
    assert loaded is not None and size == (run_copy.path / FAMILIAR_FILE).stat().st_size
    assert (loaded.k, loaded.threshold, loaded.quantile) == (3, changed.threshold, 0.9)
    # float16 on disk: the scores move by rounding only.
    assert torch.allclose(loaded.scores(validation), changed.scores(validation), atol=1e-3)


def test_the_evaluation_states_the_threshold(tiny_run: Path) -> None:
    evaluation = json.loads((tiny_run / "metrics.json").read_text())["familiar"]
    familiarity = load_familiarity(Run.load(tiny_run))
    assert familiarity is not None
    assert evaluation["threshold"] == familiarity.threshold and evaluation["k"] == familiarity.k
    assert evaluation["quantile"] == familiarity.quantile == 0.99
    assert evaluation["references"] == len(familiarity.references)
    assert evaluation["file_bytes"] == (tiny_run / FAMILIAR_FILE).stat().st_size
    info = json.loads((tiny_run / "graft.json").read_text())
    assert info["metrics"]["unfamiliar_threshold"] == familiarity.threshold
    assert "Unfamiliar inputs" in (tiny_run / "report.html").read_text()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda path: path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json"), "damaged"),
        (lambda path: path.write_bytes(path.read_bytes()[:-100]), "damaged"),  # cut short
        (lambda path: path.unlink(), None),  # a run evaluated before the file existed
    ],
)
def test_a_damaged_or_missing_file_gives_no_score_and_prediction_goes_on(
    run_copy: Run, damage, message: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    damage(run_copy.path / FAMILIAR_FILE)
    with caplog.at_level(logging.WARNING):
        (prediction,) = api.predict(run_copy.path, class_image(0, 32), top_k=1)
    assert prediction.class_name == "circle"
    assert prediction.unfamiliar is None and prediction.is_unfamiliar is None
    assert prediction.to_dict()["unfamiliar"] is None
    warnings = [record.getMessage() for record in caplog.records]
    if message is None:
        assert warnings == []
    else:
        (warning,) = warnings  # once, at load
        assert message in warning and f"graft evaluate --run {run_copy.path}" in warning


def test_a_file_made_for_other_weights_is_ignored_with_a_warning(
    run_copy: Run, caplog: pytest.LogCaptureFixture
) -> None:
    weights = run_copy.load_weights()
    run_copy.save_weights({name: tensor * 1.01 for name, tensor in weights.items()})
    with caplog.at_level(logging.WARNING):
        assert load_familiarity(run_copy) is None
    assert "made for other weights" in caplog.text
    api.evaluate(run_copy.path, quiet=True)  # what the warning says to do
    assert load_familiarity(run_copy) is not None

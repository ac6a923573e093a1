"""A class with no image in the evaluated set: the evaluation reports it instead of crashing."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch

from torchgraft.evaluate.calibration import expected_calibration_error, fit_temperature
from torchgraft.testing import make_image_folder


def test_calibration_fits_and_scores_without_one_of_the_classes() -> None:
    """Temperature and ECE on labels that never name class 2 of 3: finite, and the fitted
    temperature still lowers the ECE of overconfident logits."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (400,), generator=generator)
    logits = torch.randn(400, 3, generator=generator)
    logits[torch.arange(400), labels] += 1.0
    logits *= 6.0  # overconfident
    temperature = fit_temperature(logits, labels)
    before = expected_calibration_error(logits.softmax(1), labels)
    after = expected_calibration_error((logits / temperature).softmax(1), labels)
    assert math.isfinite(temperature) and temperature > 1.5
    assert after < before - 0.05


def test_evaluating_a_folder_without_one_class_reports_it(tiny_run: Path, tmp_path: Path) -> None:
    """`graft evaluate FOLDER` where FOLDER has no triangles: metrics.json, report.html and
    the figures are written, and the triangle row says it had no images."""
    from torchgraft import api

    run = shutil.copytree(tiny_run, tmp_path / "run")  # evaluation writes into the run
    data = make_image_folder(tmp_path / "test", classes=("circle", "square"), per_class=6)
    evaluation = api.evaluate(run, str(data), quiet=True)
    metrics = evaluation.metrics
    rows = {c.name: c for c in metrics.per_class}
    assert rows["triangle"].support == 0 and rows["circle"].support == 6
    assert metrics.absent == ["triangle"] and len(metrics.confusion) == 3
    assert sum(metrics.confusion[2]) == 0 and evaluation.images == 12
    assert math.isfinite(evaluation.ece_before) and math.isfinite(evaluation.ece_after)
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["metrics"]["absent"] == ["triangle"]
    html = (run / "report.html").read_text()
    assert "<td>triangle</td>" in html and "<td>no images</td>" in html
    assert 'id="absent-classes">No images of triangle in this set' in html
    for figure in ("confusion_matrix.png", "reliability.png"):
        assert (run / "figures" / figure).stat().st_size > 0

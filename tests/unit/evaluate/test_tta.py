from __future__ import annotations

import json
from pathlib import Path

import torch

from torchgraft import api
from torchgraft.evaluate.tta import apply_view, tta_views


def test_views_keep_the_size_and_mirror_exactly() -> None:
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    for view in tta_views("light"):
        assert apply_view(images, view).shape == images.shape, view
    assert torch.equal(apply_view(images, "plain"), images)
    assert torch.equal(apply_view(images, "flip_plain"), images.flip(-1))
    corner = apply_view(images, "crop_top_left")
    assert not torch.equal(corner, images)  # enlarged by 1/0.875, so a real crop


def test_flips_only_for_runs_trained_with_flips() -> None:
    assert not any(view.startswith("flip") for view in tta_views("none"))
    assert len(tta_views("light")) == 2 * len(tta_views("none")) == 12


def test_evaluate_with_tta_reports_both_accuracies(tiny_run: Path) -> None:
    evaluation = api.evaluate(tiny_run, quiet=True, tta=True)
    assert evaluation.tta_views == tta_views("none")
    saved = json.loads((tiny_run / "metrics.json").read_text())
    assert saved["tta_views"] == evaluation.tta_views
    assert saved["metrics"]["accuracy"] == evaluation.metrics.accuracy
    assert 0 < saved["plain_accuracy"] <= 1

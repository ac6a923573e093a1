from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from torchgraft import api
from torchgraft.evaluate.evaluator import evaluation_images, score_images
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


def test_evaluate_with_tta_averages_other_views(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)  # evaluation rewrites metrics.json and graft.json
    plain = api.evaluate(run, quiet=True)
    averaged = api.evaluate(run, quiet=True, tta=True)
    assert averaged.tta_views == tta_views("none")
    assert averaged.plain_accuracy == plain.metrics.accuracy
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["tta_views"] == averaged.tta_views
    assert saved["metrics"]["accuracy"] == averaged.metrics.accuracy
    # Every view is a different input to the model: crops really change the logits.
    loaded = api.load_run(run)
    images, _ = evaluation_images(loaded, None)
    scored = score_images(loaded, images, averaged.tta_views, quiet=True)
    assert scored.view_logits.shape[:2] == (len(averaged.tta_views), averaged.images)
    for view_logits in scored.view_logits[1:]:
        assert not torch.allclose(view_logits, scored.view_logits[0])

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from torchgraft.evaluate.evaluator import top_losses
from torchgraft.evaluate.figures import reliability_bins


def test_top_losses_are_the_mistakes_with_the_highest_cross_entropy() -> None:
    generator = torch.Generator().manual_seed(0)
    probabilities = torch.rand(50, 4, generator=generator).softmax(1)
    labels = torch.randint(0, 4, (50,), generator=generator)
    names = ["a", "b", "c", "d"]
    worst = top_losses(probabilities, labels, [f"img{i}" for i in range(50)], names)

    losses = torch.nn.functional.nll_loss(probabilities.log(), labels, reduction="none")
    wrong = [i for i in range(50) if probabilities[i].argmax() != labels[i]]
    expected = sorted(wrong, key=lambda i: -float(losses[i]))[: len(worst)]
    assert [x.source for x in worst] == [f"img{i}" for i in expected]
    assert all(x.true_class != x.predicted_class for x in worst)
    assert abs(worst[0].loss - float(losses[expected[0]])) < 1e-5


def test_reliability_bins_count_every_image_once() -> None:
    probabilities = torch.tensor([[0.95, 0.05], [0.55, 0.45], [0.3, 0.7], [0.92, 0.08]])
    labels = torch.tensor([0, 1, 1, 0])
    bins = reliability_bins(probabilities, labels, bins=10)
    assert sum(row["count"] for row in bins) == 4
    top = next(row for row in bins if row["low"] >= 0.9 - 1e-6)
    assert top["count"] == 2 and top["accuracy"] == 1.0  # 0.95 and 0.92 both right
    middle = next(row for row in bins if row["low"] <= 0.55 < row["high"])
    assert middle["accuracy"] == 0.0  # 0.55 for class 0, but it was class 1


def test_training_leaves_a_report_metrics_and_tensorboard_figures(tiny_run: Path) -> None:
    html = (tiny_run / "report.html").read_text()
    info = json.loads((tiny_run / "graft.json").read_text())
    for name in info["display_names"]:
        assert f"<td>{name}</td>" in html
    assert 'id="confusion-matrix"' in html and "data:image/png;base64," in html
    assert "http://" not in html and "https://" not in html  # opens offline
    events = EventAccumulator(str(tiny_run / "tensorboard"))
    events.Reload()
    images = events.Tags()["images"]
    assert {"evaluation/confusion_matrix", "evaluation/reliability"} <= set(images)


def test_a_failed_evaluation_does_not_fail_a_finished_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from torchgraft import api

    def broken(*args: object, **kwargs: object) -> None:
        raise MemoryError("figure too large")

    monkeypatch.setattr(api, "evaluate", broken)
    run = api.train("digits", model="mlp", epochs=1, runs_dir=str(tmp_path), quiet=True)
    assert (run.path / "model.safetensors").is_file()
    assert "the evaluation failed (figure too large)" in caplog.text
    assert "graft evaluate --run" in caplog.text


def test_the_top_losses_figure_names_classes_by_display_name(
    copied_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torchgraft import api
    from torchgraft.evaluate import figures
    from torchgraft.testing import make_image_folder

    run = api.load_run(copied_run)
    run.info.display_names = ["Circle", "Square", "Triangle"]
    run.save_info()
    drawn: dict[str, object] = {}
    real_figure = figures.top_losses_png

    def capture(tiles: list[object], captions: list[str], **options: str) -> bytes:
        drawn.update(captions=captions, **options)
        return real_figure(tiles, captions, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(figures, "top_losses_png", capture)
    test_folder = make_image_folder(copied_run.parent / "test", per_class=4)
    for path in sorted((test_folder / "circle").iterdir())[:2]:  # mislabelled: mistakes to show
        path.rename(test_folder / "square" / f"was-circle-{path.name}")
    api.evaluate(run, test_folder, quiet=True)
    captions = drawn["captions"]
    assert isinstance(captions, list) and captions
    names = r"(Circle|Square|Triangle)"
    assert all(re.fullmatch(rf"true {names} \(\d+%\), said {names} \(\d+%\)", c) for c in captions)
    assert drawn["colour_bar"]  # the heatmaps' scale is on the figure

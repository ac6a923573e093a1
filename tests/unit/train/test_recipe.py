import csv
from pathlib import Path

import torch

from torchgraft import api
from torchgraft.artifact import Run
from torchgraft.models import create_classifier
from torchgraft.testing import make_image_folder


def test_scratch_mlp_learns_the_digits(tmp_path: Path) -> None:
    run = api.train("digits", model="mlp", epochs=4, runs_dir=str(tmp_path), quiet=True)
    assert run.info.preprocessing.image_size == 8 and run.info.preprocessing.channels == 1
    assert run.info.metrics["val_accuracy"] >= 0.9
    rows = list(csv.DictReader((run.path / "metrics.csv").open()))
    assert [row["phase"] for row in rows] == ["scratch"] * 4  # no head phase from scratch


def test_frozen_phase_trains_only_the_head(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", per_class=6, size=32)
    run = api.train(
        data,
        model="efficientnet_lite0",
        freeze_epochs=2,
        epochs=0,
        image_size=32,
        runs_dir=str(tmp_path / "runs"),
        quiet=True,
    )
    trained = run.load_weights()
    prep = run.info.preprocessing
    start = create_classifier(
        "efficientnet_lite0",
        3,
        channels=3,
        image_size=32,
        mean=prep.mean,
        std=prep.std,
        pretrained=True,
    ).state_dict()
    changed = {name for name, tensor in trained.items() if not torch.equal(tensor, start[name])}
    assert changed == {"net.classifier.weight", "net.classifier.bias"}


def test_best_weights_and_metrics_are_kept(tmp_path: Path) -> None:
    run = api.train(
        "digits", model="cnn", epochs=2, batch_size=32, runs_dir=str(tmp_path), quiet=True
    )
    rows = list(csv.DictReader((run.path / "metrics.csv").open()))
    best = max(float(row["val_accuracy"]) for row in rows)
    assert Run.load(run.path).info.metrics["val_accuracy"] == best
    assert (run.path / "model.safetensors").is_file()


def test_runs_are_never_overwritten(tmp_path: Path) -> None:
    first = api.train("digits", model="mlp", epochs=1, runs_dir=str(tmp_path), quiet=True)
    second = api.train("digits", model="mlp", epochs=1, runs_dir=str(tmp_path), quiet=True)
    assert first.path.name == "mlp-digits" and second.path.name == "mlp-digits-2"

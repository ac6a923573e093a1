"""TensorBoard event files hold the scalars of every epoch, matching metrics.csv."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from torchgraft import api

EPOCHS = 2
SCALARS = ("loss/train", "loss/val", "accuracy/train", "accuracy/val", "lr")


def train(tmp_path: Path, epochs: int = EPOCHS, **settings: object) -> Path:
    run = api.train(
        "digits", model="cnn", epochs=epochs, runs_dir=str(tmp_path / "runs"),
        cache_dir=str(tmp_path / "cache"), quiet=True, **settings,
    )  # fmt: skip
    return run.path


@pytest.fixture(scope="module")
def run_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(tmp_path_factory.mktemp("tensorboard"))


@pytest.fixture(scope="module")
def events(run_path: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(run_path / "tensorboard"))
    accumulator.Reload()
    return accumulator


def metrics_rows(run_path: Path) -> list[dict[str, str]]:
    with (run_path / "metrics.csv").open() as file:
        return list(csv.DictReader(file))


def test_every_scalar_has_one_value_per_epoch(events: EventAccumulator) -> None:
    tags = events.Tags()["scalars"]
    for tag in SCALARS:
        assert tag in tags, f"{tag} missing from {tags}"
        assert [event.step for event in events.Scalars(tag)] == list(range(1, EPOCHS + 1))


@pytest.mark.parametrize(
    ("tag", "column"),
    [
        ("accuracy/val", "val_accuracy"),
        ("accuracy/train", "train_accuracy"),
        ("loss/val", "val_loss"),
        ("loss/train", "train_loss"),
        ("lr", "lr"),
    ],
)
def test_scalars_equal_the_metrics_csv(
    events: EventAccumulator, run_path: Path, tag: str, column: str
) -> None:
    logged = [event.value for event in events.Scalars(tag)]
    expected = [float(row[column]) for row in metrics_rows(run_path)]
    assert logged == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_a_grid_of_training_images_is_logged(events: EventAccumulator) -> None:
    assert "train/samples" in events.Tags()["images"]
    image = events.Images("train/samples")[0]
    assert image.width > 0 and image.height > 0


def test_tensorboard_off_writes_no_event_files(tmp_path: Path) -> None:
    run_path = train(tmp_path, tensorboard=False, epochs=1)
    assert not (run_path / "tensorboard").exists()
    assert (run_path / "metrics.csv").is_file()


def test_a_resumed_run_continues_the_scalars(tmp_path: Path) -> None:
    run_path = train(tmp_path)
    api.resume(run_path, epochs=EPOCHS + 2, quiet=True)
    events = EventAccumulator(str(run_path / "tensorboard"))
    events.Reload()
    for tag in SCALARS:
        assert [event.step for event in events.Scalars(tag)] == list(range(1, EPOCHS + 3))
    logged = [event.value for event in events.Scalars("accuracy/val")]
    expected = [float(row["val_accuracy"]) for row in metrics_rows(run_path)]
    assert logged == pytest.approx(expected, rel=1e-6)

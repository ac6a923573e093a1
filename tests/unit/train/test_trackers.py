"""Experiment trackers (`logger="mlflow,wandb"`): a real MLflow file store and W&B offline
files, checked against the run's own metrics.csv; user callbacks hear every step."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from torchgraft import api
from torchgraft.data import load_data
from torchgraft.errors import GraftRuntimeError, UserError
from torchgraft.testing import make_image_folder
from torchgraft.train.callbacks import Callback
from torchgraft.train.trackers import LOG_EVERY_STEPS

SMALL = dict(model="cnn", epochs=3, image_size=32, batch_size=4, quiet=True, report=False,
             tensorboard=False)  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("trackers") / "shapes", per_class=16)


def metrics_rows(run: api.Run) -> list[dict[str, str]]:
    with open(run.path / "metrics.csv") as file:
        return list(csv.DictReader(file))


def test_an_mlflow_run_holds_the_epochs_of_metrics_csv_and_step_scalars(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    store = tmp_path / "mlruns"  # MLflow's file store: a real local store, no server needed
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    run = api.train(data, logger="mlflow", runs_dir=str(tmp_path / "runs"), **SMALL)

    client = MlflowClient(tracking_uri=store.as_uri())
    experiment = client.get_experiment_by_name("torchgraft")
    (tracked,) = client.search_runs([experiment.experiment_id])
    assert tracked.info.run_name == run.path.name and tracked.info.status == "FINISHED"
    assert tracked.data.params["model"] == "cnn" and tracked.data.params["train.epochs"] == "3"
    rows = metrics_rows(run)
    for name in ("train_loss", "val_loss", "val_accuracy", "lr"):
        history = client.get_metric_history(tracked.info.run_id, name)
        assert [(m.step, m.value) for m in history] == [
            (int(row["epoch"]), pytest.approx(float(row[name]), rel=1e-6)) for row in rows
        ], name
    steps = client.get_metric_history(tracked.info.run_id, "step_images_per_s")
    assert len(steps) >= 2 and all(m.value > 0 for m in steps)
    assert [m.step for m in steps] == [LOG_EVERY_STEPS * (i + 1) for i in range(len(steps))]
    artifacts = {item.path for item in client.list_artifacts(tracked.info.run_id)}
    assert artifacts == {"graft.json", "metrics.csv"}


def test_an_mlflow_store_that_cannot_be_used_is_named_with_what_to_do(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///" + str(tmp_path / "mlflow.db"))
    with pytest.raises(GraftRuntimeError, match=r"could not use the tracking store sqlite:.*"
                       r"Set MLFLOW_TRACKING_URI to an MLflow server"):  # fmt: skip
        api.train(data, logger="mlflow", runs_dir=str(tmp_path / "runs"), **SMALL)


def test_a_wandb_offline_run_writes_its_files_into_the_run(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = api.train(data, logger="wandb", runs_dir=str(tmp_path / "runs"), **SMALL)
    (offline,) = (run.path / "wandb").glob("offline-run-*")
    (records,) = offline.glob("run-*.wandb")  # what `wandb sync` uploads later
    logged = records.read_bytes()  # protobuf records: the keys are there as plain bytes
    assert logged.count(b"val_accuracy") >= 3  # once per epoch (and the summary)
    assert b"step_images_per_s" in logged and b"train.epochs" in logged  # steps, settings


def test_a_user_callback_hears_every_optimizer_step(data: Path, tmp_path: Path) -> None:
    class Steps(Callback):
        def __init__(self) -> None:
            self.seen: list[tuple[int, float, float, int]] = []

        def on_step_end(self, trainer: object, step: object) -> None:
            self.seen.append((step.step, step.loss, step.lr, step.images))  # type: ignore[attr-defined]

    steps = Steps()
    api.train(data, callbacks=[steps], runs_dir=str(tmp_path / "runs"), **SMALL)
    train_images = len(load_data(str(data)).train)
    assert len(steps.seen) == 3 * math.ceil(train_images / 4)  # 3 epochs of batches of 4
    assert [step for step, *_ in steps.seen] == list(range(1, len(steps.seen) + 1))
    assert sum(images for *_, images in steps.seen) == 3 * train_images
    assert all(loss > 0 and lr > 0 for _, loss, lr, _ in steps.seen)


def test_an_unknown_logger_is_refused_with_a_suggestion(data: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"logger: 'mlfow' is not one of .* Did you mean 'mlflow'"):
        api.train(data, logger="tensorboard,mlfow", runs_dir=str(tmp_path), **SMALL)

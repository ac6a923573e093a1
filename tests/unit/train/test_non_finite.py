"""A NaN or infinite loss stops the run, and the best weights stay those of a good epoch."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from torchgraft import api
from torchgraft.errors import GraftRuntimeError
from torchgraft.testing import make_image_folder
from torchgraft.train import engine
from torchgraft.train.callbacks import Callback, EpochRecord
from torchgraft.train.checkpoint import load_checkpoint
from torchgraft.train.loop import EpochResult


def _record(val_loss: float, val_accuracy: float = 0.5) -> EpochRecord:
    return EpochRecord("scratch", 1, 1.0, 0.5, val_loss, val_accuracy, 1e-3, 1.0)


@pytest.mark.parametrize("monitor", ["val_loss", "val_accuracy"])
def test_a_nan_score_never_becomes_the_best(monitor: str) -> None:
    good, nan = _record(0.7), _record(math.nan, math.nan)
    assert not nan.improves_on(None, monitor)
    assert not nan.improves_on(good, monitor)
    assert good.improves_on(nan, monitor)  # a number beats a best that is not one


class WeightsAfterEachEpoch(Callback):
    """Runs after torchgraft's own callbacks: what model.safetensors holds after each epoch."""

    def __init__(self) -> None:
        self.saved: list[bytes] = []

    def on_epoch_end(self, trainer: Any, record: EpochRecord) -> None:
        self.saved.append((trainer.run.path / "model.safetensors").read_bytes())


class PoisonInEpoch2(Callback):
    """What a far too large learning rate does, made certain: NaN weights in epoch 2."""

    def on_step_end(self, trainer: Any, step: Any) -> None:
        if trainer.epoch == 2:
            with torch.no_grad():
                for parameter in trainer.model.parameters():
                    parameter.fill_(math.nan)


def _train(tmp_path: Path, extra: list[Callback], **settings: Any) -> Path:
    data = make_image_folder(tmp_path / "data", per_class=8, size=16)
    options = dict(
        model="mlp", epochs=4, name="run", runs_dir=str(tmp_path / "runs"), batch_size=8,
        cache_dir=str(tmp_path / "cache"), quiet=True, tensorboard=False, report=False,
    )  # fmt: skip
    with pytest.raises(GraftRuntimeError) as stopped:
        api.train(data, callbacks=extra, **{**options, **settings})
    assert "stopped at epoch 2" in str(stopped.value) and "--lr" in str(stopped.value)
    assert "--name run --overwrite" in str(stopped.value)  # the name is taken: how to retrain
    return tmp_path / "runs" / "run"


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as file:
        return list(csv.DictReader(file))


def test_a_nan_training_loss_stops_the_run_and_keeps_epoch_1(tmp_path: Path) -> None:
    kept = WeightsAfterEachEpoch()
    run = _train(tmp_path, [PoisonInEpoch2(), kept], monitor="val_accuracy")
    assert len(kept.saved) == 1
    assert (run / "model.safetensors").read_bytes() == kept.saved[0]
    assert load_checkpoint(run).meta["progress"]["epoch"] == 1  # resumable from a good state
    assert [row["epoch"] for row in _rows(run)] == ["1"]


def test_a_nan_validation_loss_under_val_loss_keeps_the_best_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    evaluate = engine.evaluate
    calls = []

    def nan_in_epoch_2(*arguments: Any, **keywords: Any) -> EpochResult:
        result = evaluate(*arguments, **keywords)
        calls.append(result)
        if len(calls) == 2:
            return EpochResult(math.nan, result.accuracy, result.complete, result.seen)
        return result

    monkeypatch.setattr(engine, "evaluate", nan_in_epoch_2)
    kept = WeightsAfterEachEpoch()
    run = _train(tmp_path, [kept], monitor="val_loss")
    assert (run / "model.safetensors").read_bytes() == kept.saved[0]
    assert api.load_run(run).info.metrics["epoch"] == 1
    assert math.isfinite(api.load_run(run).info.metrics["val_loss"])

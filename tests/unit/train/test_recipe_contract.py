"""What the recipe promises a user: the hand-off keeps the head's work, a time limit plans a
whole schedule, ties go to the lower loss, user callbacks hear every step, resume says
where it stands."""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Any

import pytest

from torchgraft import api
from torchgraft.artifact import Run
from torchgraft.errors import UserError
from torchgraft.train.callbacks import BestWeights, Callback, EpochRecord
from torchgraft.train.loop import StepRecord
from torchgraft.train.schedule import FINAL_DIVISOR


def rows(run: Run) -> list[dict[str, str]]:
    with (run.path / "metrics.csv").open(newline="") as file:
        return list(csv.DictReader(file))


class StepRecorder(Callback):
    """A user's callback: keeps every step and the moments training starts and ends."""

    def __init__(self) -> None:
        self.steps: list[StepRecord] = []
        self.started = self.ended = 0.0

    def on_train_start(self, trainer: Any) -> None:
        self.started = time.monotonic()

    def on_step_end(self, trainer: Any, step: StepRecord) -> None:
        self.steps.append(step)

    def on_train_end(self, trainer: Any) -> None:
        self.ended = time.monotonic()


def small_settings(tmp_path: Path, **settings: Any) -> dict[str, Any]:
    return dict(
        runs_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"), quiet=True,
        tensorboard=False, report=False, **settings,
    )  # fmt: skip


@pytest.mark.slow
def test_the_first_fine_tune_epoch_keeps_what_the_head_learned(tmp_path: Path) -> None:
    """mnist5k at 64 px: three head epochs, then one of the whole network (defaults)."""
    run = api.train(
        "mnist5k", **small_settings(tmp_path, model="efficientnet_lite0", freeze_epochs=3, epochs=1)
    )
    history = rows(run)
    assert [row["phase"] for row in history] == ["head"] * 3 + ["finetune"]
    head, fine_tuned = (float(history[i]["val_accuracy"]) for i in (2, 3))
    assert head > 0.8  # the head learned something worth keeping
    assert fine_tuned >= head - 0.01


def test_a_user_callback_hears_every_optimizer_step(tmp_path: Path) -> None:
    recorder = StepRecorder()
    run = api.train("digits", **small_settings(tmp_path, model="cnn", epochs=2, batch_size=64),
                    callbacks=[recorder])  # fmt: skip
    train_images = run.info.data_summary["train_images"]
    per_epoch = math.ceil(train_images / 64)
    assert [step.step for step in recorder.steps] == list(range(1, 2 * per_epoch + 1))
    assert sum(step.images for step in recorder.steps) == 2 * train_images
    # The epoch's training loss is the image-weighted mean of its steps' losses.
    first = recorder.steps[:per_epoch]
    mean = sum(step.loss * step.images for step in first) / train_images
    assert mean == pytest.approx(float(rows(run)[0]["train_loss"]), rel=1e-6)


def test_a_time_limit_plans_a_schedule_that_finishes_inside_it(tmp_path: Path) -> None:
    recorder = StepRecorder()
    limit = 12.0
    started = time.monotonic()
    run = api.train(
        "digits", **small_settings(tmp_path, model="cnn", epochs=1, time_limit=f"{limit}s"),
        callbacks=[recorder],
    )  # fmt: skip
    peak = float(run.info.config["train"]["lr"])
    last = recorder.steps[-1]
    assert last.lr == pytest.approx(peak / FINAL_DIVISOR, rel=1e-6)  # annealed to its end
    assert len(rows(run)) > 1  # the limit, not --epochs 1, chose the length
    assert recorder.ended - started <= limit


def test_a_tie_goes_to_the_lower_validation_loss() -> None:
    """lfw_subset-like: every epoch scores 100%, the losses keep falling, then rise."""
    best = BestWeights("val_accuracy", write=False)
    for epoch, loss in enumerate([0.50, 0.07, 0.20], start=1):
        best.on_epoch_end(None, EpochRecord("finetune", epoch, 0.1, 1.0, loss, 1.0, 1e-3, 1.0))  # type: ignore[arg-type]
    assert best.best_epoch == 2
    better = EpochRecord("finetune", 4, 0.1, 1.0, 0.9, 1.0 + 1e-9, 1e-3, 1.0)
    assert better.improves_on(best.best, "val_accuracy")  # a higher score wins whatever the loss


def test_resume_refuses_a_finished_run_and_says_how_to_extend_it(tmp_path: Path) -> None:
    run = api.train("digits", **small_settings(tmp_path, model="cnn", epochs=1))
    with pytest.raises(UserError, match=r"nothing to resume.*--epochs 3"):
        api.resume(run)

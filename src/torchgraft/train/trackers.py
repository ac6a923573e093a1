"""Experiment trackers as callbacks: MLflow and Weights & Biases (`--logger mlflow,wandb`).

Both log the run's settings once, the per-epoch metrics that metrics.csv holds (at step =
epoch), and every LOG_EVERY_STEPS optimizer steps the step's loss, learning rate and
images/s (at step = the optimizer step, counted across phases). A resumed run continues the
same tracker run: its id is kept in the checkpoint with the callback's state.

Each tracker is an optional extra (`pip install 'torchgraft[track]'`) and reads its usual
environment: MLFLOW_TRACKING_URI and MLFLOW_EXPERIMENT_NAME (default "torchgraft"), or
WANDB_PROJECT (default "torchgraft"), WANDB_MODE=offline and the rest of wandb's settings.
The extra brings mlflow-skinny, the client: point MLFLOW_TRACKING_URI at a server, or install
the full mlflow for its default local database.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from torchgraft.errors import GraftRuntimeError
from torchgraft.extras import require
from torchgraft.train.callbacks import Callback, EpochRecord
from torchgraft.train.loop import StepRecord

if TYPE_CHECKING:
    from torchgraft.train.engine import Trainer

LOG_EVERY_STEPS = 10
EPOCH_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds")


class StepTracker(Callback):
    """What both trackers share: a global step count, step-level rates, plain settings."""

    def __init__(self, settings: dict[str, object]) -> None:
        self.settings = settings
        self.global_step = 0
        self.tracker_run_id: str | None = None  # kept across a resume
        self._last_time: float | None = None
        self._images_since = 0

    def on_step_end(self, trainer: Trainer, step: StepRecord) -> None:
        self.global_step += 1
        self._images_since += step.images
        now = time.perf_counter()
        if self._last_time is None:  # the first step's time includes warm-up: not a rate
            self._last_time, self._images_since = now, 0
            return
        if self.global_step % LOG_EVERY_STEPS == 0:
            rate = self._images_since / max(now - self._last_time, 1e-9)
            scalars = {"step_loss": step.loss, "step_lr": step.lr, "step_images_per_s": rate}
            self.log(scalars, self.global_step)
            self._last_time, self._images_since = now, 0

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        values = asdict(record)
        self.log_epoch({name: float(values[name]) for name in EPOCH_METRICS}, record.epoch)

    def log(self, scalars: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def log_epoch(self, scalars: dict[str, float], epoch: int) -> None:
        self.log(scalars, epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"global_step": self.global_step, "tracker_run_id": self.tracker_run_id}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.global_step = int(state.get("global_step", 0))
        self.tracker_run_id = state.get("tracker_run_id")


class MlflowLogger(StepTracker):
    """One MLflow run per torchgraft run, named after its folder, in MlflowClient calls (no
    global active run, so a user's own `mlflow.start_run` is left alone)."""

    def on_train_start(self, trainer: Trainer) -> None:
        import mlflow

        try:
            self._start(trainer)
        except Exception as error:  # whatever the store raises: say which store, and why
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else error
            raise GraftRuntimeError(
                f"--logger mlflow could not use the tracking store {mlflow.get_tracking_uri()}: "
                f"{first_line}. Set MLFLOW_TRACKING_URI to an MLflow server (http://HOST:5000), "
                "or pip install mlflow for its default local database"
            ) from None

    def _start(self, trainer: Trainer) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient()
        if self.tracker_run_id is None:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "torchgraft")
            experiment = self.client.get_experiment_by_name(name)
            experiment_id = (
                experiment.experiment_id if experiment else self.client.create_experiment(name)
            )
            run = self.client.create_run(experiment_id, run_name=trainer.run.path.name)
            self.tracker_run_id = run.info.run_id
            for key, value in self.settings.items():
                self.client.log_param(self.tracker_run_id, key, str(value))
        else:
            self.client.update_run(self.tracker_run_id, status="RUNNING")

    def log(self, scalars: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [Metric(key, value, stamp, step) for key, value in scalars.items()]
        self.client.log_batch(str(self.tracker_run_id), metrics=metrics)

    def on_train_end(self, trainer: Trainer) -> None:
        for name in ("graft.json", "metrics.csv"):
            self.client.log_artifact(str(self.tracker_run_id), str(trainer.run.path / name))
        self.client.set_terminated(str(self.tracker_run_id))


class WandbLogger(StepTracker):
    """One W&B run per torchgraft run, its files under the run's folder (wandb/)."""

    def on_train_start(self, trainer: Trainer) -> None:
        import wandb

        self.wandb_run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "torchgraft"),
            name=trainer.run.path.name,
            dir=str(trainer.run.path),
            config=self.settings,
            id=self.tracker_run_id,
            resume="allow",
        )
        self.tracker_run_id = self.wandb_run.id

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.wandb_run.log(scalars, step=step)

    def log_epoch(self, scalars: dict[str, float], epoch: int) -> None:
        # W&B's step only moves forward: epoch metrics go at the current optimizer step.
        self.wandb_run.log({**scalars, "epoch": epoch}, step=self.global_step)

    def on_train_end(self, trainer: Trainer) -> None:
        self.wandb_run.finish()


TRACKERS: dict[str, type[StepTracker]] = {"mlflow": MlflowLogger, "wandb": WandbLogger}


def trackers_for(logger: str, settings: dict[str, object]) -> list[StepTracker]:
    """The trackers `train.logger` names ("mlflow,wandb"); tensorboard and csv are written
    by their own callbacks (TensorBoard unless --no-tensorboard, metrics.csv always)."""
    return [TRACKERS[name](settings) for name in tracker_names(logger)]


def require_trackers(logger: str) -> None:
    """Before a run starts: each tracker asked for is installed, or say how to install it."""
    for name in tracker_names(logger):
        require((name,), "track", f"--logger {name}")


def tracker_names(logger: str) -> list[str]:
    names = [name.strip() for name in logger.split(",")]
    return [name for name in dict.fromkeys(names) if name in TRACKERS]

"""Callbacks: what happens around the loop, each a class with documented no-op hooks.

The Trainer calls every callback's hooks in order. A callback may ask the Trainer to stop by
setting `trainer.stop_reason`; the epoch in progress still finishes and is recorded.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from torchgraft.artifact import atomic_write_bytes

if TYPE_CHECKING:
    from torchgraft.train.engine import Trainer

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.csv"


@dataclass
class EpochRecord:
    phase: str  # "frozen" (head only) or "finetune" (whole network)
    epoch: int  # 1-based, counted across phases
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float  # the head's learning rate at the end of the epoch
    seconds: float  # wall time of the epoch, validation included

    def score(self, monitor: str) -> float:
        """Higher is better: accuracy as it is, loss negated."""
        return self.val_accuracy if monitor == "val_accuracy" else -self.val_loss


class Callback:
    """Base class: every hook does nothing."""

    def on_train_start(self, trainer: Trainer) -> None:
        """Before the first epoch of this process (a resumed run calls it again)."""

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        """After an epoch has been trained and validated; `trainer.records` includes it."""

    def on_train_end(self, trainer: Trainer) -> None:
        """After the last epoch, an early stop, or a time limit."""


class MetricsCsv(Callback):
    """metrics.csv: one row per epoch, rewritten atomically so it is never half-written."""

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(asdict(record)))
        writer.writeheader()
        writer.writerows(asdict(r) for r in trainer.records)
        atomic_write_bytes(trainer.run.path / METRICS_FILE, buffer.getvalue().encode())


class BestWeights(Callback):
    """model.safetensors holds the weights of the best epoch so far (the EMA's, if used).

    Every rank tracks the best epoch (early stopping needs it); only a `write`r saves.
    """

    def __init__(self, write: bool = True) -> None:
        self.write = write

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        score = record.score(trainer.monitor)
        if trainer.best_score is not None and score <= trainer.best_score:
            return
        trainer.best_score = score
        trainer.best_epoch = record.epoch
        if not self.write:
            return
        trainer.run.save_weights(trainer.evaluated_model().state_dict())
        trainer.run.info.metrics = {
            **trainer.run.info.metrics,
            "val_accuracy": record.val_accuracy, "val_loss": record.val_loss,
            "epoch": record.epoch, "monitor": trainer.monitor,
        }  # fmt: skip
        trainer.run.save_info()


class EpochLog(Callback):
    """One log line per epoch (the CLI shows it above the progress bars)."""

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        best = "  * best" if trainer.best_epoch == record.epoch else ""
        logger.info(
            "epoch %d (%s): train loss %.4f acc %.4f | val loss %.4f acc %.4f | %.1fs%s",
            record.epoch, record.phase, record.train_loss, record.train_accuracy,
            record.val_loss, record.val_accuracy, record.seconds, best,
        )  # fmt: skip


class EarlyStopping(Callback):
    """Stop when the monitored score has not improved for `patience` epochs."""

    def __init__(self, patience: int) -> None:
        self.patience = patience

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        if trainer.best_epoch is not None and record.epoch - trainer.best_epoch >= self.patience:
            trainer.stop_reason = (
                f"early stop: {trainer.monitor} has not improved for {self.patience} epochs"
            )


class TimeLimit(Callback):
    """Stop before an epoch that would end past the limit; cut one short if it overruns."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_start(self, trainer: Trainer) -> None:
        trainer.deadline = time.monotonic() + self.seconds

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        if trainer.deadline is not None and time.monotonic() + record.seconds > trainer.deadline:
            trainer.stop_reason = f"time limit of {self.seconds:.0f}s reached"


class Checkpointer(Callback):
    """checkpoints/: the state to resume from, after every complete epoch."""

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        if trainer.epoch_complete:
            trainer.save_checkpoint()


class TensorBoardLogger(Callback):
    """Scalars per epoch, a grid of training images, and the hyper-parameters at the end."""

    def __init__(self) -> None:
        self.writer: Any = None

    def on_train_start(self, trainer: Trainer) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(trainer.run.path / "tensorboard"))
        grid = trainer.sample_image_grid()
        if grid is not None:
            self.writer.add_image("train/samples", grid, global_step=trainer.epoch)

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        for name in ("loss", "accuracy"):
            self.writer.add_scalar(f"{name}/train", getattr(record, f"train_{name}"), record.epoch)
            self.writer.add_scalar(f"{name}/val", getattr(record, f"val_{name}"), record.epoch)
        self.writer.add_scalar("lr", record.lr, record.epoch)
        self.writer.flush()

    def on_train_end(self, trainer: Trainer) -> None:
        hyper = {k: v for k, v in trainer.hyperparameters().items() if v is not None}
        best = trainer.run.info.metrics.get("val_accuracy", 0.0)
        self.writer.add_hparams(hyper, {"hparam/best_val_accuracy": best}, run_name="hparams")
        self.writer.close()

"""Callbacks: what happens around the loop, each a class with documented no-op hooks.

The Trainer calls every callback's hooks in order. A callback keeps its own state (and saves
it with `state_dict` for a resumed run, as Lightning's do); it may ask the Trainer to stop
with `trainer.stop(reason)`. Pass your own to `api.train(..., callbacks=[...])`.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from torchgraft.artifact import atomic_write_bytes
from torchgraft.train.loop import StepRecord

if TYPE_CHECKING:
    from torchgraft.train.engine import Trainer

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.csv"


@dataclass
class EpochRecord:
    phase: str  # "head" (on cached features), "finetune" (whole network) or "scratch"
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

    def improves_on(self, best: EpochRecord | None, monitor: str) -> bool:
        """A higher monitored score wins; on a tie, the lower validation loss. A score that
        is not a number (a NaN loss) never wins, and any number beats one."""
        # A safeguard, unreachable today: a non-finite loss stops the run (NonFiniteLoss)
        # before its epoch is recorded. Kept so that a NaN can never become the best.
        if not math.isfinite(self.score(monitor)):
            return False
        if best is None or not math.isfinite(best.score(monitor)):
            return True
        if self.score(monitor) != best.score(monitor):
            return self.score(monitor) > best.score(monitor)
        return self.val_loss < best.val_loss


class Callback:
    """Base class: every hook does nothing."""

    def on_train_start(self, trainer: Trainer) -> None:
        """Before the first epoch of this process (a resumed run calls it again)."""

    def on_step_end(self, trainer: Trainer, step: StepRecord) -> None:
        """After every optimizer step (its loss, learning rate and images)."""

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        """After an epoch has been trained and validated; `trainer.records` includes it."""

    def on_train_end(self, trainer: Trainer) -> None:
        """After the last epoch, an early stop, or a time limit."""

    def state_dict(self) -> dict[str, Any]:
        """Plain data to resume with (saved in every checkpoint)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back what `state_dict` returned."""


class BestSoFar(Callback):
    """Remembers the best epoch by the monitored score (ties: the lower validation loss)."""

    def __init__(self, monitor: str) -> None:
        self.monitor = monitor
        self.best: EpochRecord | None = None

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        if record.improves_on(self.best, self.monitor):
            self.best = record
            self.on_improvement(trainer, record)

    def on_improvement(self, trainer: Trainer, record: EpochRecord) -> None:
        """Called when `record` becomes the best epoch."""

    @property
    def best_epoch(self) -> int | None:
        return self.best.epoch if self.best is not None else None

    def state_dict(self) -> dict[str, Any]:
        return {"best": asdict(self.best) if self.best is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = EpochRecord(**state["best"]) if state.get("best") else None


class MetricsCsv(Callback):
    """metrics.csv: one row per epoch, rewritten atomically so it is never half-written."""

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(asdict(record)))
        writer.writeheader()
        writer.writerows(asdict(r) for r in trainer.records)
        atomic_write_bytes(trainer.run.path / METRICS_FILE, buffer.getvalue().encode())


class BestWeights(BestSoFar):
    """model.safetensors holds the weights of the best epoch so far (the EMA's, if used).

    Every rank tracks the best epoch; only a `write`r saves.
    """

    def __init__(self, monitor: str, write: bool = True) -> None:
        super().__init__(monitor)
        self.write = write

    def on_improvement(self, trainer: Trainer, record: EpochRecord) -> None:
        if not self.write:
            return
        trainer.run.save_weights(trainer.evaluated_model().state_dict())
        trainer.run.info.metrics = {
            **trainer.run.info.metrics,
            "val_accuracy": record.val_accuracy, "val_loss": record.val_loss,
            "epoch": record.epoch, "monitor": self.monitor,
        }  # fmt: skip
        trainer.run.save_info()


class EpochLog(BestSoFar):
    """One log line per epoch (the CLI shows it above the progress bars)."""

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        best = record.improves_on(self.best, self.monitor)
        super().on_epoch_end(trainer, record)
        logger.info(
            "epoch %d (%s): train loss %.4f acc %.4f | val loss %.4f acc %.4f | %.1fs%s",
            record.epoch, record.phase, record.train_loss, record.train_accuracy,
            record.val_loss, record.val_accuracy, record.seconds, "  * best" if best else "",
        )  # fmt: skip


class EarlyStopping(BestSoFar):
    """Stop when the monitored score has not improved for `patience` epochs."""

    def __init__(self, monitor: str, patience: int) -> None:
        super().__init__(monitor)
        self.patience = patience

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        super().on_epoch_end(trainer, record)
        if self.best is not None and record.epoch - self.best.epoch >= self.patience:
            trainer.stop(f"early stop: {self.monitor} has not improved for {self.patience} epochs")


class Checkpointer(Callback):
    """checkpoints/: the state to resume from, after every complete epoch."""

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        if trainer.epoch_complete:
            trainer.save_checkpoint()


class TensorBoardLogger(Callback):
    """Scalars per epoch, a grid of training images, and the hyper-parameters at the end."""

    def __init__(self, hyperparameters: dict[str, Any] | None = None) -> None:
        self.hyperparameters = hyperparameters or {}  # logged with the best accuracy at the end
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
        hyper = {k: v for k, v in self.hyperparameters.items() if v is not None}
        best = trainer.run.info.metrics.get("val_accuracy", 0.0)
        self.writer.add_hparams(hyper, {"hparam/best_val_accuracy": best}, run_name="hparams")
        self.writer.close()

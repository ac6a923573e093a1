"""Bookkeeping during training: metrics.csv and the best weights, both written atomically."""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import asdict, dataclass

from torch import nn

from torchgraft.artifact import Run, atomic_write_bytes

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


class History:
    """Keeps one row per epoch in metrics.csv and the best model in model.safetensors."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.records: list[EpochRecord] = []
        self.best_accuracy = -1.0

    def record(self, record: EpochRecord, model: nn.Module) -> None:
        self.records.append(record)
        self._write_csv()
        improved = record.val_accuracy > self.best_accuracy
        if improved:
            self.best_accuracy = record.val_accuracy
            self.run.save_weights(model.state_dict())
            self.run.info.metrics = {"val_accuracy": record.val_accuracy, "epoch": record.epoch}
            self.run.save_info()
        logger.info(
            "epoch %d (%s): train loss %.4f acc %.4f | val loss %.4f acc %.4f | %.1fs%s",
            record.epoch,
            record.phase,
            record.train_loss,
            record.train_accuracy,
            record.val_loss,
            record.val_accuracy,
            record.seconds,
            "  * best" if improved else "",
        )

    def _write_csv(self) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(asdict(self.records[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in self.records)
        atomic_write_bytes(self.run.path / METRICS_FILE, buffer.getvalue().encode())

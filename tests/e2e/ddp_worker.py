"""Each rank of a training run reports what it did (a helper of test_distributed.py).

    python -m torch.distributed.run --standalone --nproc-per-node 2 ddp_worker.py DATA RUNS OUT

trains two runs in the same two processes (one torchrun start-up: importing torch twice is
most of the test's time): "straight" to the end, then "killed", which blocks once its
checkpoint of epoch KILL_AFTER is written (torchgraft's callbacks run before the user's)
so that the test can kill it there. Each rank writes to OUT its weights before and after
the first optimizer step, the images it trained on in epoch 1, its weights at the end (or
where it blocks) and its process id. `train` runs the same in one process (RANK unset).

For the first step only, dropout is turned off: the ranks draw their own dropout masks,
which no single process at twice the batch can reproduce. Both runs do the same, so they
draw the same random numbers (none at p=0), and a resume restores the killed run's.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch import nn

from torchgraft import api
from torchgraft.train.callbacks import Callback, EpochRecord
from torchgraft.train.engine import Trainer
from torchgraft.train.loop import StepRecord

GLOBAL_BATCH = 18  # the whole training split of the test's folder: one step per epoch
EPOCHS = 4
KILL_AFTER = 2  # the killed run blocks once this epoch's checkpoint is written
SETTINGS: dict[str, Any] = dict(
    model="mlp", image_size=16, epochs=EPOCHS, batch_size=GLOBAL_BATCH, augment="none",
    loader="dataloader", num_workers=0, tensorboard=False, report=False, quiet=True,
)  # fmt: skip
BLOCK_LIMIT_S = 300  # a blocked run nobody kills ends itself


class Probe(Callback):
    """Writes `OUT/<name>-rank<r>-<what>.safetensors` files about this rank's training."""

    def __init__(self, out: Path, name: str, block_after: int | None = None) -> None:
        self.out, self.name, self.block_after = out, name, block_after
        self.rank = int(os.environ.get("RANK", "0"))
        self.seen: list[torch.Tensor] = []
        self.dropouts: list[nn.Dropout] = []

    def save(self, what: str, tensors: dict[str, torch.Tensor]) -> None:
        tensors = {key: value.detach().cpu().contiguous() for key, value in tensors.items()}
        save_file(tensors, self.out / f"{self.name}-rank{self.rank}-{what}.safetensors")

    def on_train_start(self, trainer: Trainer) -> None:
        self.save("init", dict(trainer.model.named_parameters()))
        self.dropouts = [m for m in trainer.model.modules() if isinstance(m, nn.Dropout)]
        for dropout in self.dropouts:
            dropout.p = 0.0

        def record(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            if module.training and trainer.epoch == 1:
                self.seen.append(inputs[0].detach().cpu().clone())

        trainer.model.register_forward_pre_hook(record)

    def on_step_end(self, trainer: Trainer, step: StepRecord) -> None:
        if step.step == 1 and trainer.epoch == 1:
            self.save("step1", dict(trainer.model.named_parameters()))
            for dropout in self.dropouts:
                dropout.p = 0.2

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        if record.epoch == 1:
            self.save("seen", {"images": torch.cat(self.seen)})
        if record.epoch == self.block_after:
            self.save("final", dict(trainer.model.named_parameters()))
            pid = self.out / f"{self.name}-rank{self.rank}.pid"
            pid.with_suffix(".tmp").write_text(str(os.getpid()))
            pid.with_suffix(".tmp").rename(pid)  # whole when the test reads it
            time.sleep(BLOCK_LIMIT_S)  # killed here by the test
            sys.exit(3)

    def on_train_end(self, trainer: Trainer) -> None:
        self.save("final", dict(trainer.model.named_parameters()))


def train(data: Path, runs: Path, out: Path, name: str, block_after: int | None = None) -> None:
    api.train(
        data, name=name, runs_dir=str(runs), callbacks=[Probe(out, name, block_after)],
        **SETTINGS,
    )  # fmt: skip


def main() -> None:
    data, runs, out = (Path(argument) for argument in sys.argv[1:4])
    train(data, runs, out, "straight")
    # The first run left torchrun's process group; joining it again through torchrun's
    # store would meet the first group's keys there. A fresh group for the second run:
    # torchgraft trains in a group that is already joined.
    dist.init_process_group(
        "gloo", init_method=f"file://{out / 'killed.rendezvous'}",
        rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]),
    )  # fmt: skip
    train(data, runs, out, "killed", block_after=KILL_AFTER)


if __name__ == "__main__":
    main()

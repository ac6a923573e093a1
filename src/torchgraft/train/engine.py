"""The Trainer: runs the phases of a recipe epoch by epoch, resumably.

A plan is a list of phases: "frozen" (only the new head learns, on cached backbone features)
and "finetune" (the whole network, the backbone at a fraction of the head's rate). Each phase
has its own AdamW optimizer and one-cycle schedule. After every epoch the callbacks record
it, keep the best weights and write a checkpoint; a resumed Trainer restores the weights,
the optimizer, the schedule and the random state, and continues with the next epoch exactly
as the uninterrupted run would have.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.optim import AdamW
from torch.optim.lr_scheduler import OneCycleLR
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision.utils import make_grid

from torchgraft.artifact import Run
from torchgraft.config import RunConfig
from torchgraft.data import make_loader
from torchgraft.models import GraftedClassifier
from torchgraft.train.callbacks import Callback, EpochRecord
from torchgraft.train.checkpoint import (
    Checkpoint,
    restore_optimizer,
    restore_rng,
    save_checkpoint,
)
from torchgraft.train.distributed import (
    SINGLE,
    Distributed,
    ShardSampler,
    any_rank,
    sum_over_ranks,
)
from torchgraft.train.loop import EpochResult, StepOptions, evaluate, train_one_epoch

ImageSet = Dataset[tuple[torch.Tensor, int]]


@dataclass
class Phase:
    name: str  # "frozen" or "finetune"
    epochs: int


@dataclass
class TrainingData:
    """What the phases train on; `features` is filled on first use (frozen phase only)."""

    train_images: ImageSet  # augmented, for fine-tuning
    train_plain: ImageSet  # no augmentation, for features
    val_images: ImageSet
    features: tuple[TensorDataset, TensorDataset] | None = None


class Trainer:
    """Runs `phases` on `model`, calling `callbacks` after every epoch."""

    def __init__(
        self, run: Run, model: GraftedClassifier, data: TrainingData, config: RunConfig,
        device: torch.device, phases: list[Phase], callbacks: list[Callback],
        step_options: StepOptions, feature_source: Any = None, distributed: Distributed = SINGLE,
    ) -> None:  # fmt: skip
        self.run, self.model, self.data, self.config = run, model, data, config
        self.device, self.phases, self.callbacks = device, phases, callbacks
        self.step_options = step_options  # for the fine-tune phase
        self.feature_source = feature_source  # computes (or loads) frozen-backbone features
        self.distributed = distributed
        self._parallel_model: nn.Module | None = None  # the DDP wrapper, made on first use
        self.ema = _make_ema(model, config.train.ema_decay)
        self.monitor = config.train.monitor
        self.records: list[EpochRecord] = []
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self.epoch = 0  # completed epochs, across phases
        self.position = (0, 0)  # (phase index, completed epochs in that phase)
        self.stop_reason: str | None = None
        self.deadline: float | None = None
        self.epoch_complete = True
        self._optimizer: AdamW | None = None
        self._scheduler: OneCycleLR | None = None

    def fit(self, checkpoint: Checkpoint | None = None) -> None:
        """Run the remaining epochs of every phase (all of them without a checkpoint)."""
        if checkpoint is not None:
            self._restore(checkpoint)
        for callback in self.callbacks:
            callback.on_train_start(self)
        start_phase, done = self.position
        for index in range(start_phase, len(self.phases)):
            self._run_phase(index, done if index == start_phase else 0, checkpoint)
            if self.stop_reason:
                break
        for callback in self.callbacks:
            callback.on_train_end(self)

    def evaluated_model(self) -> nn.Module:
        """The model whose scores count: the EMA when one is kept, once fine-tuning runs.

        The frozen phase trains the head alone, without an average, so it scores the model.
        """
        phase = self.phases[min(self.position[0], len(self.phases) - 1)]
        if self.ema is not None and phase.name == "finetune":
            return self.ema.module
        return self.model

    def _run_phase(self, index: int, done: int, checkpoint: Checkpoint | None) -> None:
        phase = self.phases[index]
        module, train, val, options = self._phase_setup(phase)
        steps_per_epoch = math.ceil(len(train) / options.accumulate)
        self._optimizer, self._scheduler = self._optimizer_for(phase, steps_per_epoch)
        if checkpoint is not None and done > 0 and (index, done) == self.position:
            restore_optimizer(self._optimizer, checkpoint)
            self._scheduler.load_state_dict(checkpoint.meta["scheduler"])
        for phase_epoch in range(done, phase.epochs):
            self._run_epoch(phase, module, train, val, options)
            self.position = (index, phase_epoch + 1)
            for callback in self.callbacks:
                callback.on_epoch_end(self, self.records[-1])
            if any_rank(self.stop_reason is not None, self.distributed):
                self.stop_reason = self.stop_reason or "stopped by another rank"
                return

    def _run_epoch(
        self, phase: Phase, module: nn.Module, train: DataLoader[Any], val: DataLoader[Any],
        options: StepOptions,
    ) -> None:  # fmt: skip
        assert self._optimizer is not None and self._scheduler is not None
        self.epoch += 1
        # The shuffling order depends only on (seed, epoch): a resumed run sees the same batches.
        if isinstance(train.sampler, ShardSampler):
            train.sampler.set_epoch(self.epoch)
        elif train.generator is not None:
            train.generator.manual_seed(self.config.train.seed * 100_003 + self.epoch)
        started = time.perf_counter()
        # Ranks must take equal steps, so under DDP the time limit acts between epochs only.
        options.deadline = self.deadline if self.distributed.world_size == 1 else None
        quiet = self.config.train.quiet
        trained = train_one_epoch(
            module, train, self._optimizer, self._scheduler, self.device, options,
            description=f"epoch {self.epoch} {phase.name}", quiet=quiet,
        )  # fmt: skip
        scored = self._scored_module(phase, module)
        validated = evaluate(scored, val, self.device, options, quiet=quiet)
        trained, validated = self._combined(trained), self._combined(validated)
        self.epoch_complete = trained.complete
        if not trained.complete:
            self.stop_reason = "time limit reached during the epoch"
        self.records.append(
            EpochRecord(
                phase.name, self.epoch, trained.loss, trained.accuracy, validated.loss,
                validated.accuracy, self._optimizer.param_groups[-1]["lr"],
                time.perf_counter() - started,
            )
        )  # fmt: skip

    def _scored_module(self, phase: Phase, module: nn.Module) -> nn.Module:
        if phase.name == "finetune" and self.ema is not None:
            return self.ema.module
        return self.model if module is self._parallel_model else module

    def _combined(self, result: EpochResult) -> EpochResult:
        """One process's epoch averages turned into the averages over all ranks."""
        if self.distributed.world_size == 1:
            return result
        loss, correct, seen = sum_over_ranks(
            [result.loss * result.seen, result.accuracy * result.seen, float(result.seen)],
            self.distributed,
        )
        return EpochResult(loss / max(seen, 1), correct / max(seen, 1), result.complete, int(seen))

    def _phase_setup(
        self, phase: Phase
    ) -> tuple[nn.Module, DataLoader[Any], DataLoader[Any], StepOptions]:
        data, train_config = self.config.data, self.config.train
        if phase.name == "frozen":
            if self.data.features is None:
                self.data.features = self.feature_source(self.data)
            train_features, val_features = self.data.features
            train = make_loader(train_features, data.batch_size, True, 0, train_config.seed)
            val = make_loader(val_features, 1024, False, 0)
            return self.model.head, train, val, StepOptions(loss=self.step_options.loss)
        self.model.set_backbone_trainable(True)
        self.step_options.ema = self.ema  # updated after every fine-tune step
        if self.distributed.world_size > 1:
            return self._parallel_setup()
        train = make_loader(
            self.data.train_images, data.batch_size, True, data.num_workers, train_config.seed
        )
        val = make_loader(self.data.val_images, data.batch_size * 2, False, data.num_workers)
        return self.model, train, val, self.step_options

    def _parallel_setup(self) -> tuple[nn.Module, DataLoader[Any], DataLoader[Any], StepOptions]:
        """DDP: the model wrapped once; each rank loads its shard, batch_size split over ranks."""
        from torch.nn.parallel import DistributedDataParallel

        context, data, seed = self.distributed, self.config.data, self.config.train.seed
        if self._parallel_model is None:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self._parallel_model = DistributedDataParallel(self.model, device_ids=device_ids)
        per_rank = max(1, data.batch_size // context.world_size)
        images = {"train": self.data.train_images, "val": self.data.val_images}
        train, val = (
            DataLoader(
                images[name], batch_size=per_rank * (1 if name == "train" else 2),
                num_workers=data.num_workers,
                sampler=ShardSampler(len(images[name]), context, name == "train", seed),  # type: ignore[arg-type]
            )
            for name in ("train", "val")
        )  # fmt: skip
        return self._parallel_model, train, val, self.step_options

    def _optimizer_for(self, phase: Phase, steps_per_epoch: int) -> tuple[AdamW, OneCycleLR]:
        """AdamW under one cycle; in fine-tuning the backbone learns at lr / divisor."""
        train = self.config.train
        assert isinstance(train.lr, float), "the learning rate is resolved before training"
        lr = train.lr
        head = list(self.model.head.parameters())
        if phase.name == "frozen":
            groups = [{"params": head, "lr": lr}]
        elif train.layer_decay is not None:
            groups = _layer_decay_groups(self.model, lr, train.weight_decay, train.layer_decay)
        else:
            backbone_lr = lr / train.backbone_lr_divisor
            groups = [
                {"params": self.model.backbone_parameters(), "lr": backbone_lr},
                {"params": head, "lr": lr},
            ]
        optimizer = AdamW(groups, weight_decay=train.weight_decay)
        rates: list[float] = [float(group["lr"]) for group in groups]  # type: ignore[arg-type]
        total = max(1, phase.epochs * steps_per_epoch)
        return optimizer, OneCycleLR(optimizer, max_lr=rates, total_steps=total)

    def save_checkpoint(self) -> None:
        assert self._optimizer is not None and self._scheduler is not None
        progress = {
            "epoch": self.epoch,
            "position": list(self.position),
            "phases": [asdict(phase) for phase in self.phases],
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "records": [asdict(record) for record in self.records],
            "stop_reason": self.stop_reason,
        }
        save_checkpoint(
            self.run.path, model=self.model, optimizer=self._optimizer,
            scheduler=self._scheduler, progress=progress, ema=self.ema,
        )  # fmt: skip

    def _restore(self, checkpoint: Checkpoint) -> None:
        progress = checkpoint.meta["progress"]
        self.model.load_state_dict(checkpoint.part("model"))
        if self.ema is not None:
            self.ema.load_state_dict(checkpoint.part("ema"))
        restore_rng(checkpoint)
        self.epoch = int(progress["epoch"])
        self.position = (int(progress["position"][0]), int(progress["position"][1]))
        self.best_score, self.best_epoch = progress["best_score"], progress["best_epoch"]
        self.records = [EpochRecord(**record) for record in progress["records"]]

    def sample_image_grid(self) -> torch.Tensor | None:
        """A grid of up to 16 training images as the network sees them (for TensorBoard)."""
        count = min(16, len(self.data.train_images))  # type: ignore[arg-type]
        if count == 0:
            return None
        images = [self.data.train_images[i][0] for i in range(count)]
        return make_grid(torch.stack(images), nrow=4)

    def hyperparameters(self) -> dict[str, Any]:
        flat: dict[str, Any] = {"model": self.config.model.name}
        for section in ("data", "train"):
            for key, value in asdict(getattr(self.config, section)).items():
                if isinstance(value, (int, float, str, bool)):
                    flat[f"{section}.{key}"] = value
        return flat


def _layer_decay_groups(
    model: GraftedClassifier, lr: float, weight_decay: float, layer_decay: float
) -> list[dict[str, Any]]:
    """One group per depth, lr * layer_decay ** (distance from the head) (timm's grouping).

    The head keeps `lr`; each block towards the input learns `layer_decay` times slower.
    Norms and biases get no weight decay, as timm does.
    """
    from timm.optim._param_groups import param_groups_layer_decay

    groups = param_groups_layer_decay(model.net, weight_decay=weight_decay, layer_decay=layer_decay)
    for group in groups:
        group["lr"] = lr * group.pop("lr_scale", 1.0)
    return groups


def _make_ema(model: GraftedClassifier, decay: float | None) -> Any:
    """An exponential moving average of weights and buffers, with the decay warmed up.

    A fixed decay from the first step would keep the average near the starting point for
    ~1/(1-decay) steps (BatchNorm statistics especially), so early epochs would score an
    untrained network. As in timm and Ultralytics, the decay ramps up: min(decay, (1+n)/(10+n)).
    """
    if decay is None:
        return None
    from torch.optim.swa_utils import AveragedModel

    def average(
        averaged: torch.Tensor, current: torch.Tensor, count: torch.Tensor | int
    ) -> torch.Tensor:
        step_decay = min(decay, (1.0 + float(count)) / (10.0 + float(count)))
        return averaged * step_decay + current * (1.0 - step_decay)

    return AveragedModel(model, avg_fn=average, use_buffers=True)

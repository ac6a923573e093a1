"""The Trainer: runs the phases of a plan epoch by epoch, resumably.

A plan is a list of phase objects (`train.phases`): the head alone on cached features, the
whole network, or a network from scratch. Each phase gets its own AdamW optimizer over the
groups it names and a one-cycle schedule whose length a time budget may set. After every
step and every epoch the callbacks hear about it; they record, keep the best weights,
checkpoint, and may stop the run. A resumed Trainer restores the weights, the optimizer, the
schedule, the callbacks' state and the random state, and continues with the next epoch
exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim import AdamW
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import TensorDataset
from torchvision.utils import make_grid

from torchgraft.artifact import WEIGHTS_FILE, Run
from torchgraft.errors import GraftRuntimeError
from torchgraft.models import GraftedClassifier
from torchgraft.train.batches import BatchSource, Loader
from torchgraft.train.callbacks import Callback, EpochRecord
from torchgraft.train.checkpoint import (
    Checkpoint,
    replace_it,
    restore_optimizer,
    restore_rng,
    save_checkpoint,
)
from torchgraft.train.distributed import (
    SINGLE,
    Distributed,
    ShardSampler,
    any_rank,
    broadcast_text,
    sum_over_ranks,
)
from torchgraft.train.ema import make_ema
from torchgraft.train.loop import EpochResult, StepOptions, StepRecord, evaluate, train_one_epoch
from torchgraft.train.optim import OptimizerSettings
from torchgraft.train.phases import ImageSet, Phase, PhaseData, feature_data, phase_from_dict
from torchgraft.train.schedule import OneCycle, curve_of, one_cycle

Features = tuple[TensorDataset, TensorDataset]


@dataclass(frozen=True)
class TrainerSettings:
    """Everything the Trainer decides with, resolved (no "auto", no None left to fill)."""

    optimizer: OptimizerSettings
    batch_size: int  # images per step, over all ranks
    num_workers: int  # loader processes for image phases
    seed: int  # shuffling order: seed and epoch decide it, so a resume sees the same batches
    ema_decay: float  # score an exponential moving average of the weights; 0: none
    train_depthwise: bool  # False: depthwise filters stay fixed (CPU speed)
    keep_norm_statistics: bool  # whole-network phases normalise with the running statistics
    quiet: bool  # no progress bars
    loader: str = "dataloader"  # resident (images on the device), dataloader, or auto
    compile: bool = False  # torch.compile the network for whole-network phases


@dataclass
class TrainingData:
    """What the phases train on; `features` computes (or loads) the head phase's features."""

    train_images: ImageSet  # augmented, for whole-network phases
    val_images: ImageSet
    features: Callable[[], Features]
    _computed: Features | None = None

    def head_features(self) -> Features:
        if self._computed is None:
            self._computed = self.features()
        return self._computed


@dataclass
class _ActivePhase:
    index: int
    phase: Phase
    module: nn.Module
    train: Loader
    val: Loader
    options: StepOptions
    optimizer: AdamW
    scheduler: LambdaLR

    @property
    def curve(self) -> OneCycle:
        return curve_of(self.scheduler)

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(len(self.train) / self.options.accumulate))


class Trainer:
    """Runs `phases` on `model`, telling `callbacks` about every step and epoch."""

    def __init__(
        self, run: Run, model: GraftedClassifier, data: TrainingData, phases: list[Phase],
        settings: TrainerSettings, step_options: StepOptions, callbacks: list[Callback],
        device: torch.device, distributed: Distributed = SINGLE,
    ) -> None:  # fmt: skip
        self.run, self.model, self.data, self.phases = run, model, data, phases
        self.settings, self.step_options, self.callbacks = settings, step_options, callbacks
        self.device, self.distributed = device, distributed
        self.ema = make_ema(model, settings.ema_decay)
        self.records: list[EpochRecord] = []
        self.epoch = 0  # completed epochs, across phases
        self.position = (0, 0)  # (phase index, completed epochs in that phase)
        self.stop_reason: str | None = None
        self.epoch_complete = True
        self._active: _ActivePhase | None = None
        self._parallel_model: nn.Module | None = None  # the DDP wrapper, made on first use
        self._compiled: nn.Module | None = None  # torch.compile's module, made on first use
        self.batch_source = BatchSource(
            settings.loader, settings.batch_size, settings.seed, device, distributed
        )

    # --- what callbacks may ask and do ----------------------------------------------------

    def stop(self, reason: str) -> None:
        """End the run after the current step (an epoch under DDP); the first reason stays."""
        self.stop_reason = self.stop_reason or reason

    @property
    def phase_index(self) -> int:
        return self.position[0]

    @property
    def phase_name(self) -> str:
        return self.phases[self.phase_index].name

    @property
    def phase_epochs(self) -> int:
        return self.phases[self.phase_index].epochs

    @property
    def in_last_phase(self) -> bool:
        return self.phase_index == len(self.phases) - 1

    @property
    def phase_finished(self) -> bool:
        return self.position[1] >= self.phase_epochs

    @property
    def phase_steps(self) -> int:
        """Optimizer steps taken so far in the current phase."""
        return int(self._require_active().scheduler.last_epoch)

    @property
    def steps_per_epoch(self) -> int:
        return self._require_active().steps_per_epoch

    @property
    def validation_images_per_step(self) -> float:
        """Validation images per training image of one step (to estimate validation time)."""
        active = self._require_active()
        per_step = self.settings.batch_size * active.options.accumulate
        return len(active.val.dataset) / max(1, per_step)  # type: ignore[arg-type]

    @property
    def distributed_run(self) -> bool:
        return self.distributed.world_size > 1

    def plan_steps(self, total: int) -> None:
        """Set the current phase's schedule to `total` steps; its epochs follow from it."""
        active = self._require_active()
        if self.distributed_run:  # every rank must take the same steps: rank 0 decides
            total = int(broadcast_text(str(total), self.distributed))
        active.curve.total_steps = max(total, self.phase_steps + 1)
        active.phase.epochs = math.ceil(active.curve.total_steps / active.steps_per_epoch)

    # --- running ---------------------------------------------------------------------------

    def fit(self, checkpoint: Checkpoint | None = None) -> None:
        """Run the remaining epochs of every phase (all of them without a checkpoint)."""
        if checkpoint is not None:
            self._restore(checkpoint)
        self._call("on_train_start")
        for index in range(self.position[0], len(self.phases)):
            if index > self.position[0]:
                self.position = (index, 0)
            if self.position[1] < self.phases[index].epochs:
                self._run_phase(index, checkpoint)
            if self.stop_reason:
                break
        self._call("on_train_end")

    def evaluated_model(self) -> nn.Module:
        """The model whose scores count: the EMA when one is kept, in whole-network phases.

        The head phase trains the head alone, without an average, so it scores the model.
        """
        phase = self.phases[min(self.position[0], len(self.phases) - 1)]
        if self.ema is not None and phase.whole_network:
            return self.ema.module
        return self.model

    def _run_phase(self, index: int, checkpoint: Checkpoint | None) -> None:
        phase = self.phases[index]
        active = self._start_phase(index, phase)
        resuming = checkpoint is not None and self.position[1] > 0
        if resuming and checkpoint is not None:
            restore_optimizer(active.optimizer, checkpoint)
            active.scheduler.load_state_dict(checkpoint.meta["scheduler"])
        while self.position[1] < phase.epochs:
            self._run_epoch(active)
            refuse_non_finite(self.records[-1], self.run.path)  # before any callback saves
            self.position = (index, self.position[1] + 1)
            self._call("on_epoch_end", self.records[-1])
            if any_rank(self.stop_reason is not None, self.distributed):
                self.stop("stopped by another rank")
                return

    def _start_phase(self, index: int, phase: Phase) -> _ActivePhase:
        module = phase.prepare(self.model, self.settings.train_depthwise)
        if phase.whole_network:
            options = replace(self.step_options, ema=self.ema, after_step=self._after_step)
            if self.settings.keep_norm_statistics:
                options = replace(options, prepare=self._keep_statistics)
            data = PhaseData(
                self.data.train_images, self.data.val_images, self.settings.num_workers,
                self.settings.batch_size * 2,
            )  # fmt: skip
            if self.settings.compile:
                module = self._compile(module)
            if self.distributed_run:
                module = self._parallel(module)
        else:
            options = StepOptions(loss=self.step_options.loss, after_step=self._after_step)
            data = feature_data(self.data.head_features())
        sharded = phase.whole_network and self.distributed_run
        train, val = self.batch_source.batches(data, sharded)
        optimizer = AdamW(phase.groups(self.model, self.settings.optimizer))
        steps_per_epoch = max(1, math.ceil(len(train) / options.accumulate))
        scheduler, _ = one_cycle(optimizer, phase.epochs * steps_per_epoch)
        self._active = _ActivePhase(index, phase, module, train, val, options, optimizer, scheduler)
        return self._active

    def _run_epoch(self, active: _ActivePhase) -> None:
        self.epoch += 1
        # The shuffling order depends only on (seed, epoch): a resumed run sees the same batches.
        if isinstance(active.train.sampler, ShardSampler):
            active.train.sampler.set_epoch(self.epoch)
        elif active.train.generator is not None:
            active.train.generator.manual_seed(self.settings.seed * 100_003 + self.epoch)
        started = time.perf_counter()
        trained = train_one_epoch(
            active.module, active.train, active.optimizer, active.scheduler, self.device,
            active.options, description=f"epoch {self.epoch} {active.phase.name}",
            quiet=self.settings.quiet,
        )  # fmt: skip
        scored = self._scored_module(active)
        validated = evaluate(
            scored, active.val, self.device, active.options, quiet=self.settings.quiet
        )
        trained, validated = self._combined(trained), self._combined(validated)
        schedule_done = self.phase_steps >= active.curve.total_steps
        self.epoch_complete = trained.complete or schedule_done
        if schedule_done:  # a planned end: this was the phase's last epoch
            active.phase.epochs = self.position[1] + 1
        self.records.append(
            EpochRecord(
                active.phase.name, self.epoch, trained.loss, trained.accuracy, validated.loss,
                validated.accuracy, float(active.optimizer.param_groups[-1]["lr"]),
                time.perf_counter() - started,
            )
        )  # fmt: skip

    def _after_step(self, step: StepRecord) -> bool:
        """Tell the callbacks; end the epoch when the schedule is over or one asks to stop."""
        self._call("on_step_end", step)
        if step.step >= self._require_active().curve.total_steps:
            return True
        return self.stop_reason is not None and not self.distributed_run

    def _keep_statistics(self, module: nn.Module) -> None:
        self.model.keep_normalization_statistics()

    def _scored_module(self, active: _ActivePhase) -> nn.Module:
        if active.phase.whole_network and self.ema is not None:
            return self.ema.module
        return self.model if active.module is self._parallel_model else active.module

    def _combined(self, result: EpochResult) -> EpochResult:
        """One process's epoch averages turned into the averages over all ranks."""
        if self.distributed.world_size == 1:
            return result
        loss, correct, seen = sum_over_ranks(
            [result.loss * result.seen, result.accuracy * result.seen, float(result.seen)],
            self.distributed,
        )
        return EpochResult(loss / max(seen, 1), correct / max(seen, 1), result.complete, int(seen))

    def _compile(self, module: nn.Module) -> nn.Module:
        """torch.compile, once per run: its graphs are reused by every later phase."""
        if self._compiled is None:
            self._compiled = torch.compile(module)  # type: ignore[assignment]
        assert self._compiled is not None
        return self._compiled

    def _parallel(self, module: nn.Module) -> nn.Module:
        """DDP: the model wrapped once, on first use."""
        from torch.nn.parallel import DistributedDataParallel

        if self._parallel_model is None:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self._parallel_model = DistributedDataParallel(module, device_ids=device_ids)
        return self._parallel_model

    def _call(self, hook: str, *arguments: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *arguments)

    def _require_active(self) -> _ActivePhase:
        assert self._active is not None, "asked about a phase before one started"
        return self._active

    # --- checkpoints -----------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        active = self._require_active()
        progress = {
            "epoch": self.epoch,
            "position": list(self.position),
            "phases": [phase.to_dict() for phase in self.phases],
            "records": [asdict(record) for record in self.records],
            "stop_reason": self.stop_reason,
            "callbacks": {key: cb.state_dict() for key, cb in self._keyed_callbacks().items()},
            "precision": self.step_options.precision,
        }
        if self.step_options.scaler is not None:  # fp16's loss scale, so resuming goes on
            progress["scaler"] = self.step_options.scaler.state_dict()
        save_checkpoint(
            self.run.path, model=self.model, optimizer=active.optimizer,
            scheduler=active.scheduler, progress=progress, ema=self.ema,
        )  # fmt: skip

    def _restore(self, checkpoint: Checkpoint) -> None:
        progress = checkpoint.meta["progress"]
        self.model.load_state_dict(checkpoint.part("model"))
        if self.ema is not None:
            self.ema.load_state_dict(checkpoint.part("ema"))
        restore_rng(checkpoint)
        self.epoch = int(progress["epoch"])
        self.position = (int(progress["position"][0]), int(progress["position"][1]))
        self.records = [EpochRecord(**record) for record in progress["records"]]
        if self.step_options.scaler is not None and "scaler" in progress:
            self.step_options.scaler.load_state_dict(progress["scaler"])
        saved = progress.get("callbacks", {})
        for key, callback in self._keyed_callbacks().items():
            if key in saved:
                callback.load_state_dict(saved[key])

    def _keyed_callbacks(self) -> dict[str, Callback]:
        """Callbacks by class name (numbered when a class appears twice), for checkpoints."""
        keyed: dict[str, Callback] = {}
        for callback in self.callbacks:
            name = type(callback).__name__
            key, number = name, 2
            while key in keyed:
                key, number = f"{name}-{number}", number + 1
            keyed[key] = callback
        return keyed

    def sample_image_grid(self) -> torch.Tensor | None:
        """A grid of up to 16 training images as the network sees them (for TensorBoard)."""
        count = min(16, len(self.data.train_images))  # type: ignore[arg-type]
        if count == 0:
            return None
        images = [self.data.train_images[i][0] for i in range(count)]
        return make_grid(torch.stack(images), nrow=4)


class NonFiniteLoss(GraftRuntimeError):
    """The loss became NaN or infinite: the run stops before the epoch is recorded."""


def refuse_non_finite(record: EpochRecord, run_path: Path) -> None:
    """Stop the run when an epoch's training or validation loss is not a number.

    Raised before the callbacks hear of the epoch, so the best weights, metrics.csv and
    the checkpoint stay those of the last good epoch. Under DDP the losses are summed over
    ranks first, so every rank stops together.
    """
    bad = {"training": record.train_loss, "validation": record.val_loss}
    bad = {name: loss for name, loss in bad.items() if not math.isfinite(loss)}
    if not bad:
        return
    losses = " and ".join(f"{name} loss is {loss}" for name, loss in bad.items())
    kept = (
        f"the best weights so far are kept in {run_path / WEIGHTS_FILE}"
        if (run_path / WEIGHTS_FILE).is_file()
        else "no epoch finished with a usable loss, so no weights were saved"
    )
    rate = "--head-lr" if record.phase == "head" else "--lr"
    raise NonFiniteLoss(
        f"training stopped at epoch {record.epoch} ({record.phase} phase): the {losses}. "
        f"Its weights are discarded; {kept}. Train again with a lower {rate} (this epoch "
        f"ended at {record.lr:.2e}) or with --grad-clip 1.0, {replace_it(run_path)}."
    )


def saved_phases(checkpoint: Checkpoint) -> list[Phase]:
    return [phase_from_dict(saved) for saved in checkpoint.meta["progress"]["phases"]]
